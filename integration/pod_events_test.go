package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"k8s.io/client-go/kubernetes/fake"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/agent"
)

// recordingSink is client-go's fake clientset behind the agent's
// Kubernetes event sink.
func fakeEvents() (*agent.KubeEvents, *fake.Clientset) {
	client := fake.NewClientset()
	return agent.NewKubeEvents(client, "node-test"), client
}

// TestPodEvents: a slow fetch gets a StorepkgFetching event with its
// progress and a StorepkgFetched event; a failed one a warning naming the
// path and the cause: the agent reads them from the records real shims
// write, and posts them through client-go (a fake clientset here; the
// kind e2e uses a real API server).
func TestPodEvents(t *testing.T) {
	setup(t)
	slowDir, slowRoot, slowAll, slowKey := syntheticCache(t, "events", 8)
	slow, _ := countingCache(t, slowDir, 800*time.Millisecond)
	url, _ := countingCache(t, fixture.cache, 0)
	statusDir := filepath.Join(t.TempDir(), "fetches")
	env := critest.Start(t, critest.Options{
		ShimPath: fixture.shim,
		StorepkgOptions: map[string]any{
			"Substituters":      []string{url, slow},
			"TrustedPublicKeys": []string{fixture.key.Public, slowKey.Public().String()},
			"StatusDir":         statusDir,
			"MaxJobs":           2,
		},
	})
	sink, client := fakeEvents()
	ctx, cancel := context.WithCancel(context.Background())
	a, err := agent.New(ctx, agent.Config{
		StoreRoot: env.StoreRoot, StatusDir: statusDir,
		PollInterval: 100 * time.Millisecond, SlowFetchAfter: time.Second, EventUpdateInterval: time.Second,
		Interval: time.Hour, HighPercent: 100, LowPercent: 99,
		Events: sink,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); a.Wait() }()

	slowPod := env.PodConfig("slow", "shop", paths(slowRoot.Absolute(), fixture.fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, slowPod)
	id, err := env.CreateContainer(t, podID, env.ContainerConfig("app", critest.PauseImage, []string{"sleep", "3600"}), slowPod)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	env.Start(t, id)
	t.Logf("start with a slow cache took %v", time.Since(start))

	unknown := cachetest.MakePath("nowhere", "missing-1.0").Absolute()
	badPod := env.PodConfig("bad", "shop", paths(unknown))
	badID := env.RunPodSandbox(t, critest.HandlerStorepkg, badPod)
	cid, err := env.CreateContainer(t, badID, env.ContainerConfig("app", critest.PauseImage, []string{"sleep", "1"}), badPod)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.CrictlErr("start", cid); err == nil {
		t.Fatal("start of a pod with an unknown path succeeded")
	}

	events := func() []corev1.Event {
		l, err := client.CoreV1().Events("shop").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return l.Items
	}
	byReason := map[string][]corev1.Event{}
	deadline := time.Now().Add(20 * time.Second)
	for {
		byReason = map[string][]corev1.Event{}
		for _, e := range events() {
			byReason[e.Reason] = append(byReason[e.Reason], e)
		}
		if len(byReason[agent.ReasonFetching]) > 0 && len(byReason[agent.ReasonFetched]) > 0 && len(byReason[agent.ReasonFetchFailed]) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events after 20s: %+v", byReason)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, e := range events() {
		t.Logf("event %s %s on %s/%s (x%d): %s", e.Type, e.Reason, e.InvolvedObject.Namespace, e.InvolvedObject.Name, e.Count, e.Message)
	}
	root := slowRoot.Absolute()
	fetching := regexp.MustCompile(`^(fetching \d+ paths, \d+(\.\d)?/\d+(\.\d)? MB for|looking up the closure of) ` + regexp.QuoteMeta(root) + ` and 1 more`)
	for _, e := range byReason[agent.ReasonFetching] {
		if !fetching.MatchString(e.Message) || e.Type != corev1.EventTypeNormal || e.InvolvedObject.Name != "slow" || string(e.InvolvedObject.UID) != podUID(slowPod) {
			t.Errorf("fetching event: %s %q on %+v", e.Type, e.Message, e.InvolvedObject)
		}
	}
	if len(byReason[agent.ReasonFetching]) != 1 {
		t.Errorf("%d StorepkgFetching events for one fetch, want one (updated)", len(byReason[agent.ReasonFetching]))
	}
	// Everything was downloaded: the synthetic closure and the tools'.
	fetched := fmt.Sprintf("fetched %d paths (", len(slowAll)+len(nixtest.QueryClosure(t, fixture.fx.Store, fixture.fx.Tools)))
	if e := byReason[agent.ReasonFetched]; len(e) != 1 || !strings.HasPrefix(e[0].Message, fetched) || !strings.Contains(e[0].Message, root+" and 1 more in ") {
		t.Errorf("fetched events: %+v", e)
	}
	want := "cannot fetch " + unknown + ": not found in any cache"
	for _, e := range byReason[agent.ReasonFetchFailed] {
		if !strings.HasPrefix(e.Message, want) || e.Type != corev1.EventTypeWarning || e.InvolvedObject.Name != "bad" || string(e.InvolvedObject.UID) != podUID(badPod) {
			t.Errorf("failure event: %s %q on %+v; want %q", e.Type, e.Message, e.InvolvedObject, want)
		}
	}
	env.StopPod(t, podID)
	env.RmPod(t, podID)
	env.StopPod(t, badID)
	env.RmPod(t, badID)
}
