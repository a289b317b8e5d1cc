package shim_test

// The shim's fetch status records and the node agent (pkg/agent,
// cmd/storepkg agent) that consumes them, with the real containerd, runc,
// crictl, Nix-built closures and HTTP caches on 127.0.0.1.

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/internal/critest"
	"github.com/storepkg/storepkg/internal/metricstest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/internal/tmpfstest"
	"github.com/storepkg/storepkg/pkg/agent"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/fetchrecord"
	"github.com/storepkg/storepkg/pkg/gcowner"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/store"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// storepkgCLI is cmd/storepkg, built beside the shim by setup.
func storepkgCLI(t *testing.T) string {
	t.Helper()
	return filepath.Join(fixture.dir, "storepkg")
}

// countingCache serves a cache directory on 127.0.0.1, counting the NAR
// bytes it sends and delaying each NAR response by delay.
func countingCache(t *testing.T, dir string, delay time.Duration) (url string, narBytes func() int64) {
	var n atomic.Int64
	url = nixtest.Serve(t, dir, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/nar/") {
				select {
				case <-time.After(delay):
				case <-r.Context().Done():
					return
				}
				w = &countingWriter{ResponseWriter: w, n: &n}
			}
			h.ServeHTTP(w, r)
		})
	})
	return url, n.Load
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// syntheticCache writes a signed cache with a synthetic closure of n paths.
func syntheticCache(t *testing.T, seed string, n int) (dir string, root storepath.Path, all []storepath.Path, key narinfo.SecretKey) {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(nil)
	key = narinfo.SecretKey{Name: seed + "-1", Key: priv}
	dir = filepath.Join(t.TempDir(), seed)
	w, err := cachetest.NewWriter(dir, key, true)
	if err != nil {
		t.Fatal(err)
	}
	root, all, err = w.Synthetic(seed, n)
	if err != nil {
		t.Fatal(err)
	}
	return dir, root, all, key
}

// readRecords reads every record in the status directory.
func readRecords(t *testing.T, dir string) []*fetchrecord.Record {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []*fetchrecord.Record
	for _, e := range entries {
		if _, ok := fetchrecord.IDOf(e.Name()); !ok {
			continue
		}
		r, err := fetchrecord.Read(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func recordsOf(recs []*fetchrecord.Record, pod string) []*fetchrecord.Record {
	var out []*fetchrecord.Record
	for _, r := range recs {
		if r.Pod.Name == pod {
			out = append(out, r)
		}
	}
	return out
}

func podUID(pod map[string]any) string {
	return pod["metadata"].(map[string]any)["uid"].(string)
}

// agentProcess is `storepkg agent` started by a test.
type agentProcess struct {
	cmd     *exec.Cmd
	addr    string
	logPath string
	exited  chan struct{}
}

// startAgent runs the storepkg agent binary and waits until it serves.
// It is stopped by PID at cleanup.
func startAgent(t *testing.T, args ...string) *agentProcess {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "agent.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(storepkgCLI(t), append([]string{"agent", "--listen-address", "127.0.0.1:0", "--log-format", "json"}, args...)...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), "NODE_NAME=") // no cluster here
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &agentProcess{cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
			return
		default:
		}
		cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			p.dumpLog(t)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for p.addr == "" {
		f, err := os.Open(logPath)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var line struct{ Msg, Listen string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "storepkg agent started" {
				p.addr = line.Listen
			}
		}
		f.Close()
		select {
		case <-p.exited:
			p.dumpLog(t)
			t.Fatalf("storepkg agent exited: %v", cmd.ProcessState)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.dumpLog(t)
			t.Fatal("storepkg agent not serving after 20s")
		}
	}
	return p
}

func (p *agentProcess) dumpLog(t *testing.T) {
	b, _ := os.ReadFile(p.logPath)
	t.Logf("storepkg agent log:\n%s", b)
}

func (p *agentProcess) scrape(t *testing.T) metricstest.Families {
	t.Helper()
	m, err := metricstest.Scrape("http://" + p.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// waitMetrics scrapes until cond holds.
func (p *agentProcess) waitMetrics(t *testing.T, what string, cond func(metricstest.Families) bool) metricstest.Families {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		m := p.scrape(t)
		if cond(m) {
			return m
		}
		if time.Now().After(deadline) {
			p.dumpLog(t)
			t.Fatalf("metrics: no %s after 30s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the agent with SIGTERM and expects a clean exit.
func (p *agentProcess) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("storepkg agent did not stop within 10s of SIGTERM")
	}
	if !p.cmd.ProcessState.Success() {
		p.dumpLog(t)
		t.Errorf("storepkg agent: %v", p.cmd.ProcessState)
	}
}

// TestStatusRecordsAndMetrics: pods that start, that name an unknown path
// and that name a path signed by an untrusted key leave the records the
// contract says; the agent, started afterwards, counts each record once
// into its metrics (scraped over HTTP), removes them, and expires the
// record of a fetch whose shim is SIGKILLed.
func TestStatusRecordsAndMetrics(t *testing.T) {
	setup(t)
	url, narBytes := countingCache(t, fixture.cache, 0)
	strangerDir, strangerRoot, _, _ := syntheticCache(t, "stranger", 3) // signed by a key the node does not trust
	untrusted := nixtest.Serve(t, strangerDir, nil)
	slowDir, slowRoot, slowAll, slowKey := syntheticCache(t, "slow", 12)
	slow, _ := countingCache(t, slowDir, 3*time.Second)
	statusDir := filepath.Join(t.TempDir(), "fetches")
	env := critest.Start(t, critest.Options{
		ShimPath: fixture.shim,
		StorepkgOptions: map[string]any{
			"Substituters":      []string{url, untrusted, slow},
			"TrustedPublicKeys": []string{fixture.key.Public, slowKey.Public().String()},
			"StatusDir":         statusDir,
		},
	})
	fx := fixture.fx

	// A pod that runs.
	okPod := env.PodConfig("ok", "default", paths(fx.Hello, fx.Tools))
	okPodID := env.RunPodSandbox(t, critest.HandlerStorepkg, okPod)
	id, err := env.CreateContainer(t, okPodID, env.ContainerConfig("app", critest.PauseImage, []string{"hello-dyn", "records"}), okPod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id)
	env.WaitLogs(t, id, "hello from records", 30*time.Second)

	// Pods whose closure cannot be fetched.
	unknown := cachetest.MakePath("nowhere", "missing-1.0").Absolute()
	failing := map[string]map[string]any{
		"unknown":   env.PodConfig("unknown", "default", paths(unknown)),
		"untrusted": env.PodConfig("untrusted", "default", paths(strangerRoot.Absolute())),
	}
	for _, name := range []string{"unknown", "untrusted"} {
		pod := failing[name]
		podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
		id, err := env.CreateContainer(t, podID, env.ContainerConfig("app", critest.PauseImage, []string{"sleep", "1"}), pod)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := env.CrictlErr("start", id); err == nil {
			t.Fatalf("%s: start succeeded: %s", name, out)
		}
	}

	// The records, as the shims left them (no agent yet).
	recs := readRecords(t, statusDir)
	for _, r := range recs {
		b, _ := json.Marshal(r)
		t.Logf("record %s", b)
		if !r.Completed() {
			t.Errorf("record %s in state %s after its fetch returned", r.ID, r.State)
		}
		if r.Writer.PID <= 0 || r.Start.IsZero() || r.End.Before(r.Start) || r.Pod.Namespace != "default" {
			t.Errorf("record %s: writer %+v start %v end %v pod %+v", r.ID, r.Writer, r.Start, r.End, r.Pod)
		}
	}
	ok := recordsOf(recs, "ok")
	if len(ok) != 1 {
		t.Fatalf("%d records for pod ok, want 1 (the prefetch, joined by the container)", len(ok))
	}
	r := ok[0]
	if r.State != fetchrecord.Done || r.Pod.UID != podUID(okPod) || r.SandboxID != okPodID || !slices.Equal(r.Roots, []string{fx.Hello, fx.Tools}) {
		t.Errorf("pod ok's record: state %s pod %+v sandbox %s roots %v", r.State, r.Pod, r.SandboxID, r.Roots)
	}
	n := len(fx.Closure)
	if r.Paths != (fetchrecord.Paths{Total: n, Done: n, Fetched: n, Closure: n}) {
		t.Errorf("pod ok's paths %+v, want all %d", r.Paths, n)
	}
	if served := narBytes(); r.Bytes.Done != served || r.Bytes.Total != served || len(r.Caches) != 1 || r.Caches[url] != served {
		t.Errorf("pod ok's bytes %+v per cache %v; the cache served %d", r.Bytes, r.Caches, served)
	}
	if r.Error != nil || r.Refusals != (fetchrecord.Refusals{}) {
		t.Errorf("pod ok's error %+v refusals %+v", r.Error, r.Refusals)
	}
	for name, want := range map[string]fetchapi.Failure{
		"unknown":   {Kind: "not_found", Path: unknown, Message: unknown + ": not found in any cache"},
		"untrusted": {Kind: "untrusted", Path: strangerRoot.Absolute(), Cache: untrusted, Message: strangerRoot.Absolute() + ": no trusted signature"},
	} {
		rs := recordsOf(recs, name)
		if len(rs) == 0 {
			t.Errorf("no record for pod %s", name)
		}
		for _, r := range rs {
			if r.State != fetchrecord.Failed || r.Error == nil || r.Pod.UID != podUID(failing[name]) {
				t.Errorf("pod %s: record state %s error %+v pod %+v", name, r.State, r.Error, r.Pod)
				continue
			}
			if r.Error.Kind != want.Kind || r.Error.Path != want.Path || r.Error.Cache != want.Cache || !strings.HasPrefix(r.Error.Message, want.Message) {
				t.Errorf("pod %s: error %+v, want %+v...", name, *r.Error, want)
			}
			if name == "untrusted" && r.Refusals.Signature < 1 {
				t.Errorf("pod untrusted: refusals %+v", r.Refusals)
			}
		}
	}

	// What the metrics must say, from the records.
	var failures, signatureRefusals float64
	byKind := map[string]float64{}
	for _, r := range recs {
		if r.State == fetchrecord.Failed {
			failures++
			byKind[r.Error.Kind]++
		}
		signatureRefusals += float64(r.Refusals.Signature)
	}

	a := startAgent(t, "--root", env.StoreRoot, "--status-dir", statusDir, "--status-poll", "100ms",
		"--interval", "1h", "--gc-high-percent", "100", "--gc-low-percent", "99")
	total := float64(len(recs))
	m := a.waitMetrics(t, "counts of every record", func(m metricstest.Families) bool {
		return m.Get("storepkg_fetches_total", "result", "success")+m.Get("storepkg_fetches_total", "result", "failure") >= total
	})
	check := func(m metricstest.Families) {
		t.Helper()
		for _, c := range []struct {
			name   string
			labels []string
			want   float64
		}{
			{"storepkg_fetches_total", []string{"result", "success"}, 1},
			{"storepkg_fetches_total", []string{"result", "failure"}, failures},
			{"storepkg_fetch_failures_total", []string{"reason", "not_found"}, byKind["not_found"]},
			{"storepkg_fetch_failures_total", []string{"reason", "untrusted"}, byKind["untrusted"]},
			{"storepkg_fetch_failures_total", []string{"reason", "aborted"}, 0},
			{"storepkg_fetch_duration_seconds", []string{"result", "success"}, 1},
			{"storepkg_fetch_duration_seconds", []string{"result", "failure"}, failures},
			{"storepkg_substitutions_total", nil, float64(n)},
			{"storepkg_fetched_bytes_total", []string{"cache", url}, float64(narBytes())},
			{"storepkg_refusals_total", []string{"kind", "signature"}, signatureRefusals},
			{"storepkg_refusals_total", []string{"kind", "hash"}, 0},
			{"storepkg_fetches_in_progress", nil, 0},
			{"storepkg_store_paths", nil, float64(n)},
			{"storepkg_gc_runs_total", []string{"result", "success"}, 0},
		} {
			if got, present := m.Value(c.name, c.labels...); !present || got != c.want {
				t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, present, c.want)
			}
		}
		if caches := m.LabelValues("storepkg_fetched_bytes_total", "cache"); !slices.Equal(caches, []string{url}) {
			t.Errorf("bytes counted for caches %v, want only %s", caches, url)
		}
		if got := m.Get("storepkg_store_bytes"); got <= 0 {
			t.Errorf("storepkg_store_bytes %v", got)
		}
	}
	check(m)
	if left := readRecords(t, statusDir); len(left) != 0 {
		t.Errorf("%d records left after the agent consumed them", len(left))
	}
	// Ten more polls count nothing twice.
	time.Sleep(time.Second)
	check(a.scrape(t))
	resp, err := http.Get("http://" + a.addr + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %v %v", resp, err)
	}

	// A fetch in progress (a slow cache); then its shim is SIGKILLed: the
	// agent expires the record it left in state fetching.
	slowPod := env.PodConfig("slow", "default", paths(slowRoot.Absolute()))
	slowPodID := env.RunPodSandbox(t, critest.HandlerStorepkg, slowPod)
	a.waitMetrics(t, "a fetch in progress", func(m metricstest.Families) bool {
		return m.Get("storepkg_fetches_in_progress") == 1
	})
	running := readRecords(t, statusDir)
	if len(running) != 1 || running[0].State != fetchrecord.Fetching || running[0].Pod.Name != "slow" {
		t.Fatalf("records during the slow fetch: %+v", running)
	}
	shimPID := running[0].Writer.PID
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", shimPID))
	if !strings.Contains(string(cmdline), "containerd-shim-storepkg-v1") {
		t.Fatalf("record writer %d is not our shim: %q", shimPID, cmdline)
	}
	if r := running[0]; r.Paths.Done >= len(slowAll) {
		t.Fatalf("slow fetch already done: %+v", r.Paths)
	}
	child := fetchChild(env.StoreRoot)
	if child == 0 {
		t.Fatal("no storepkg fetch child during the slow fetch")
	}
	t.Logf("killing shim %d mid-fetch (fetch child %d): %+v %+v", shimPID, child, running[0].Paths, running[0].Bytes)
	if err := syscall.Kill(shimPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The child goes with its shim (parent-death signal): nobody would
	// wait for its result.
	for deadline := time.Now().Add(15 * time.Second); processAlive(child); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("fetch child %d still runs 15 s after its shim was killed", child)
			break
		}
	}
	m = a.waitMetrics(t, "the aborted fetch", func(m metricstest.Families) bool {
		return m.Get("storepkg_fetch_failures_total", "reason", "aborted") == 1
	})
	if got := m.Get("storepkg_fetches_in_progress"); got != 0 {
		t.Errorf("fetches_in_progress %v after the shim died", got)
	}
	if got := m.Get("storepkg_fetches_total", "result", "failure"); got != failures+1 {
		t.Errorf("fetches_total{failure} %v, want %v", got, failures+1)
	}
	if left := readRecords(t, statusDir); len(left) != 0 {
		t.Errorf("records left after the shim died: %+v", left)
	}
	// The dead shim's GC roots stay until a collector sweeps them (the
	// agent does so every interval; here storepkg gc): the running pod's
	// roots are kept.
	rootsDir := gcowner.RootsDir(env.StoreRoot)
	deadRoot := filepath.Join(rootsDir, gcowner.RootName(slowPodID, slowRoot))
	helloPath, err := storepath.Parse(fx.Hello)
	if err != nil {
		t.Fatal(err)
	}
	liveRoot := filepath.Join(rootsDir, gcowner.RootName(okPodID, helloPath))
	if _, err := os.Lstat(deadRoot); err != nil {
		t.Errorf("the killed shim's root: %v", err)
	}
	if out, err := exec.Command(storepkgCLI(t), "gc", "--root", env.StoreRoot).CombinedOutput(); err != nil || !strings.Contains(string(out), "removed 1 GC roots of 1 shims that are gone") {
		t.Errorf("storepkg gc: %v\n%s", err, out)
	}
	if _, err := os.Lstat(deadRoot); !os.IsNotExist(err) {
		t.Errorf("the killed shim's root survived storepkg gc: %v", err)
	}
	if _, err := os.Lstat(liveRoot); err != nil {
		t.Errorf("the running pod's root: %v", err)
	}
	env.CrictlErr("stopp", slowPodID)
	env.CrictlErr("rmp", slowPodID)
	a.stop(t)
	env.StopPod(t, okPodID)
	env.RmPod(t, okPodID)
}

// processAlive says whether pid runs (a zombie does not).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z") && !strings.HasPrefix(rest, "X")
}

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

// TestRunningClosureSurvivesDiskPressure: the store is on a small tmpfs
// filled past the agent's high threshold. The agent's collection loop
// deletes a removed pod's closure once it is older than the minimum age,
// never before, and never the closures of running containers; once one
// of two pods is deleted, its unshared paths go and those it shared with
// the other pod stay. Nix finds the store consistent afterwards.
func TestRunningClosureSurvivesDiskPressure(t *testing.T) {
	setup(t)
	const minAge = 10 * time.Second
	storeRoot := tmpfstest.Mount(t, 32<<20)
	url, _ := countingCache(t, fixture.cache, 0)
	junkDir, junkRoot, junkAll, junkKey := syntheticCache(t, "junk", 6)
	junkURL, _ := countingCache(t, junkDir, 0)
	statusDir := filepath.Join(t.TempDir(), "fetches")
	env := critest.Start(t, critest.Options{
		ShimPath: fixture.shim,
		StorepkgOptions: map[string]any{
			"Substituters":      []string{url, junkURL},
			"TrustedPublicKeys": []string{fixture.key.Public, junkKey.Public().String()},
			"StoreRoot":         storeRoot,
			"StatusDir":         statusDir,
		},
	})
	fx := fixture.fx
	ctx := context.Background()
	valid := func(paths []string) map[string]bool {
		st, err := store.Open(ctx, storeRoot)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		var ps []storepath.Path
		for _, p := range paths {
			sp, err := storepath.Parse(p)
			if err != nil {
				t.Fatal(err)
			}
			ps = append(ps, sp)
		}
		v, err := st.ValidSubset(ctx, ps)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for p, ok := range v {
			out[p.Absolute()] = ok
		}
		return out
	}

	// A pod that came and went: its closure (prefetched) is garbage.
	junkPod := env.PodConfig("gone", "default", paths(junkRoot.Absolute()))
	junkPodID := env.RunPodSandbox(t, critest.HandlerStorepkg, junkPod)
	var junkFetched time.Time // no later than the junk's registration
	for deadline := time.Now().Add(30 * time.Second); ; {
		if rs := recordsOf(readRecords(t, statusDir), "gone"); len(rs) == 1 && rs[0].State == fetchrecord.Done {
			junkFetched = rs[0].Start
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the gone pod's prefetch did not finish in 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	env.StopPod(t, junkPodID)
	env.RmPod(t, junkPodID)
	var junk []string
	for _, p := range junkAll {
		junk = append(junk, p.Absolute())
	}

	// Two running pods: A uses hello and tools, B tools only.
	podA := env.PodConfig("a", "default", paths(fx.Hello, fx.Tools))
	podAID := env.RunPodSandbox(t, critest.HandlerStorepkg, podA)
	ctrA, err := env.CreateContainer(t, podAID, env.ContainerConfig("app", critest.PauseImage, []string{"hello-dyn", "pod a"}), podA)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, ctrA)
	podB := env.PodConfig("b", "default", paths(fx.Tools))
	podBID := env.RunPodSandbox(t, critest.HandlerStorepkg, podB)
	ctrB, err := env.CreateContainer(t, podBID, env.ContainerConfig("app", critest.PauseImage, []string{"sleep", "3600"}), podB)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, ctrB)
	env.WaitLogs(t, ctrA, "hello from pod a", 30*time.Second)
	closureA := nixtest.QueryClosure(t, storeRoot, fx.Hello)
	closureB := nixtest.QueryClosure(t, storeRoot, fx.Tools)
	var unsharedA []string
	for _, p := range closureA {
		if !slices.Contains(closureB, p) {
			unsharedA = append(unsharedA, p)
		}
	}
	if len(unsharedA) == 0 || len(closureB) == 0 {
		t.Fatalf("closures: A %v, B %v", closureA, closureB)
	}

	// Disk pressure: the tmpfs 95% full, so that each collection may free
	// 15% (more than pod a's closure) and the pressure lasts after it.
	// Real Nix (the queries above) reserved 8 MiB in db/reserved, which
	// every collection deletes first: out of the picture with it.
	if err := os.Remove(filepath.Join(storeRoot, "nix/var/nix/db/reserved")); err != nil {
		t.Fatal(err)
	}
	fillTo(t, storeRoot, 0.95)

	runs := make(chan agent.GCRun, 100)
	actx, cancel := context.WithCancel(ctx)
	a, err := agent.New(actx, agent.Config{
		StoreRoot: storeRoot, StatusDir: statusDir,
		Interval: 300 * time.Millisecond, HighPercent: 85, LowPercent: 80, MinAge: minAge,
		OnGC: func(r agent.GCRun) {
			select {
			case runs <- r:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(actx); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); a.Wait() }()
	deleted := map[string]bool{}
	youngRuns := 0 // collections while the junk was younger than the minimum age
	// waitDeleted collects runs until every path of want is deleted.
	waitDeleted := func(want []string, what string) {
		t.Helper()
		deadline := time.After(60 * time.Second)
		for {
			missing := 0
			for _, p := range want {
				if !deleted[p] {
					missing++
				}
			}
			if missing == 0 {
				return
			}
			select {
			case r := <-runs:
				if r.Err != nil {
					t.Fatalf("collection: %v", r.Err)
				}
				if !r.Collected {
					t.Fatalf("a check at %.1f%% usage did not collect; the test needs the pressure to last: %+v", r.UsagePercent, r)
				}
				if age := r.Time.Sub(junkFetched); age < minAge-500*time.Millisecond {
					youngRuns++
					if r.Result.Valid > 0 {
						t.Errorf("a collection %v after the junk was fetched deleted %v: younger than the minimum age %v", age, r.Result.Dead, minAge)
					}
				}
				for _, p := range r.Result.Dead {
					deleted[p] = true
				}
			case <-deadline:
				t.Fatalf("%s: %d paths not deleted after 60s (deleted: %v)", what, missing, deleted)
			}
		}
	}

	waitDeleted(junk, "the gone pod's closure")
	t.Logf("%d collections under pressure deleted nothing while the junk was younger than %v", youngRuns, minAge)
	if youngRuns == 0 {
		t.Error("no collection ran while the junk was young: the minimum age was not exercised")
	}
	for _, p := range append(slices.Clone(closureA), closureB...) {
		if deleted[p] {
			t.Errorf("%s of a running container deleted", p)
		}
	}
	v := valid(append(slices.Clone(closureA), closureB...))
	for p, ok := range v {
		if !ok {
			t.Errorf("%s of a running container is no longer valid", p)
		}
	}
	// The running containers still work off their closure.
	if state := env.ContainerState(t, ctrA); state != "CONTAINER_RUNNING" {
		t.Errorf("pod a's container is %s after the collection", state)
	}
	for _, p := range closureA {
		if strings.HasSuffix(p, "-glibc-host") {
			if out := env.Exec(t, ctrA, "head", "-c", "4", p+"/lib/libc.so.6"); out != "\x7fELF" {
				t.Errorf("libc in pod a after the collection starts with %q", out)
			}
		}
	}

	// Pod A goes: its unshared paths follow; what B uses stays.
	env.StopPod(t, podAID)
	env.RmPod(t, podAID)
	waitDeleted(unsharedA, "pod a's unshared paths")
	for _, p := range closureB {
		if deleted[p] {
			t.Errorf("%s, shared with the running pod b, deleted", p)
		}
	}
	for p, ok := range valid(closureB) {
		if !ok {
			t.Errorf("%s of pod b is no longer valid", p)
		}
	}
	if out := env.Exec(t, ctrB, "ls", fx.Tools+"/bin"); !strings.Contains(out, "sleep") {
		t.Errorf("pod b after the collection: %q", out)
	}
	cancel()
	a.Wait()
	env.StopPod(t, podBID)
	env.RmPod(t, podBID)
	nixtest.Verify(t, storeRoot)
}

// fillTo writes a file beside the store so its filesystem is used to
// fraction of its size.
func fillTo(t *testing.T, dir string, fraction float64) {
	t.Helper()
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	size, avail := int64(fs.Blocks)*fs.Bsize, int64(fs.Bavail)*fs.Bsize
	need := int64(fraction*float64(size)) - (size - avail)
	if need <= 0 {
		t.Fatalf("%s is already %.1f%% full", dir, 100-float64(avail)*100/float64(size))
	}
	if err := os.WriteFile(filepath.Join(dir, "filler"), make([]byte, need), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d of %d bytes available after filling", dir, int64(fs.Bavail)*fs.Bsize, size)
}
