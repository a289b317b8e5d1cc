package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/internal/metricstest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/fetchrecord"
	"github.com/storepkg/storepkg/pkg/gcowner"
	"github.com/storepkg/storepkg/pkg/storepath"
)

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
