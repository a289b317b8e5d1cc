package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/fetchrecord"
)

var testPod = fetchrecord.Pod{Namespace: "shop", Name: "web-7d9f", UID: "0b1c2d3e-aaaa-4bbb-8ccc-0123456789ab"}

// TestEventMessages: what `kubectl describe pod` shows for a fetch.
func TestEventMessages(t *testing.T) {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	hello := "/nix/store/0c7d8mjhb7z2r4dbbz5d2m5m5kzx0a9h-hello-2.12"
	rec := &fetchrecord.Record{
		Roots: []string{hello, "/nix/store/1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bash-5.2"},
		Start: start, Updated: start.Add(12 * time.Second),
		Paths: fetchrecord.Paths{Total: 120, Done: 37, Fetched: 37},
		Bytes: fetchrecord.Bytes{Total: 210_400_000, Done: 45_200_000},
	}
	for _, c := range []struct{ got, want string }{
		{fetchingMessage(rec), "fetching 120 paths, 45/210 MB for " + hello + " and 1 more"},
		{fetchingMessage(&fetchrecord.Record{Roots: []string{hello}}), "looking up the closure of " + hello + " in the binary caches"},
		{fetchingMessage(&fetchrecord.Record{Roots: []string{hello}, WaitingForSlot: 2}),
			"waiting for a fetch slot for " + hello + ": the node runs at most 2 closure fetches at once (runtime option MaxConcurrentFetches)"},
		{fetchingMessage(&fetchrecord.Record{Roots: []string{hello}, Paths: fetchrecord.Paths{Total: 3}, Bytes: fetchrecord.Bytes{Total: 2_345_678, Done: 1_000_000}}),
			"fetching 3 paths, 1.0/2.3 MB for " + hello},
	} {
		if c.got != c.want {
			t.Errorf("got  %q\nwant %q", c.got, c.want)
		}
	}
	done := *rec
	done.State, done.End = fetchrecord.Done, start.Add(42*time.Second+30*time.Millisecond)
	done.Paths.Fetched, done.Bytes.Done = 120, 210_400_000
	if got, want := fetchedMessage(&done), "fetched 120 paths (210 MB) for "+hello+" and 1 more in 42s"; got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	// Where the bytes came from, once peers gave some.
	done.Caches = map[string]int64{"http://cache.example": 3_100_000, "peer:node-b": 40_000_000, "peer:node-c": 2_300_000}
	if got, want := fetchedMessage(&done), "fetched 120 paths (210 MB) for "+hello+" and 1 more in 42s: 42 MB from peers, 3.1 MB from upstream"; got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	missing := "/nix/store/2bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-missing-1.0"
	failed := *rec
	failed.State = fetchrecord.Failed
	failed.Error = &fetchapi.Failure{Kind: "not_found", Path: missing,
		Message: missing + " (needed by " + hello + "): not found in any cache (http://cache.example: not found)"}
	if got, want := failedMessage(&failed), "cannot fetch "+failed.Error.Message; got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	failed.Error = &fetchapi.Failure{Kind: "other", Message: "opening node store: disk full"}
	if got, want := failedMessage(&failed), "cannot fetch the closure of "+hello+" and 1 more: opening node store: disk full"; got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

// TestKubeEvents: the events on the pod, through client-go's fake
// clientset: one Event per new message, a series updated in place by a
// patch, a new Event when the old one is gone.
func TestKubeEvents(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	k := NewKubeEvents(client, "node-1")
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

	post := func(ev PodEvent) {
		t.Helper()
		if err := k.Post(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	list := func() []corev1.Event {
		t.Helper()
		l, err := client.CoreV1().Events(testPod.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return l.Items
	}

	post(PodEvent{Pod: testPod, Type: corev1.EventTypeNormal, Reason: ReasonFetching, Series: "rec-1",
		Message: "fetching 120 paths, 45/210 MB for /nix/store/x-hello", Time: t0})
	events := list()
	if len(events) != 1 {
		t.Fatalf("%d events, want 1", len(events))
	}
	e := events[0]
	want := corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: testPod.Namespace, Name: testPod.Name, UID: types.UID(testPod.UID)}
	if e.InvolvedObject != want {
		t.Errorf("involvedObject %+v, want %+v", e.InvolvedObject, want)
	}
	if e.Namespace != testPod.Namespace || !strings.HasPrefix(e.Name, testPod.Name+".") {
		t.Errorf("event %s/%s", e.Namespace, e.Name)
	}
	if e.Reason != ReasonFetching || e.Type != corev1.EventTypeNormal || e.Message != "fetching 120 paths, 45/210 MB for /nix/store/x-hello" {
		t.Errorf("reason %q type %q message %q", e.Reason, e.Type, e.Message)
	}
	if e.Source != (corev1.EventSource{Component: EventComponent, Host: "node-1"}) || e.ReportingController != EventController ||
		e.Count != 1 || !e.FirstTimestamp.Time.Equal(t0) || !e.LastTimestamp.Time.Equal(t0) {
		t.Errorf("source %+v controller %q count %d first %v last %v", e.Source, e.ReportingController, e.Count, e.FirstTimestamp, e.LastTimestamp)
	}

	// Progress of the same fetch: the same Event, patched.
	t1 := t0.Add(15 * time.Second)
	post(PodEvent{Pod: testPod, Type: corev1.EventTypeNormal, Reason: ReasonFetching, Series: "rec-1",
		Message: "fetching 120 paths, 150/210 MB for /nix/store/x-hello", Time: t1})
	events = list()
	if len(events) != 1 {
		t.Fatalf("%d events after an update, want 1", len(events))
	}
	if e := events[0]; e.Count != 2 || e.Message != "fetching 120 paths, 150/210 MB for /nix/store/x-hello" ||
		!e.LastTimestamp.Time.Equal(t1) || !e.FirstTimestamp.Time.Equal(t0) {
		t.Errorf("after the update: count %d message %q first %v last %v", e.Count, e.Message, e.FirstTimestamp, e.LastTimestamp)
	}
	var patches int
	for _, a := range client.Actions() {
		if a.GetVerb() == "patch" {
			patches++
			if p := a.(k8stesting.PatchAction); p.GetPatchType() != types.StrategicMergePatchType {
				t.Errorf("patch type %s", p.GetPatchType())
			}
		}
	}
	if patches != 1 {
		t.Errorf("%d patches, want 1", patches)
	}

	// A failure: a Warning of its own; the same failure again (kubelet's
	// retry) counts up on it.
	failure := PodEvent{Pod: testPod, Type: corev1.EventTypeWarning, Reason: ReasonFetchFailed,
		Message: "cannot fetch /nix/store/y-missing: not found in any cache", Time: t1.Add(time.Second)}
	post(failure)
	failure.Time = failure.Time.Add(10 * time.Second)
	post(failure)
	var warnings []corev1.Event
	for _, e := range list() {
		if e.Type == corev1.EventTypeWarning {
			warnings = append(warnings, e)
		}
	}
	if len(warnings) != 1 || warnings[0].Reason != ReasonFetchFailed || warnings[0].Count != 2 || warnings[0].Message != failure.Message {
		t.Errorf("warnings %+v", warnings)
	}

	// The API server dropped the Event (its TTL): the next one is created anew.
	if err := client.CoreV1().Events(testPod.Namespace).Delete(ctx, warnings[0].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	failure.Time = failure.Time.Add(time.Minute)
	post(failure)
	warnings = nil
	for _, e := range list() {
		if e.Type == corev1.EventTypeWarning {
			warnings = append(warnings, e)
		}
	}
	if len(warnings) != 1 || warnings[0].Count != 1 {
		t.Errorf("after the Event expired: %+v", warnings)
	}

	// Messages are cut at 1024 bytes; an event without a pod is refused.
	post(PodEvent{Pod: testPod, Type: corev1.EventTypeWarning, Reason: "Long", Message: strings.Repeat("é", 2000), Time: t1})
	for _, e := range list() {
		if e.Reason == "Long" && (len(e.Message) > maxMessage || !strings.HasSuffix(e.Message, "...")) {
			t.Errorf("long message: %d bytes", len(e.Message))
		}
	}
	if err := k.Post(ctx, PodEvent{Reason: ReasonFetchFailed, Message: "x"}); err == nil {
		t.Error("posted an event naming no pod")
	}
}
