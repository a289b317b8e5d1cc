package integration

// The soak (`make soak`, not `make test`): pod create/delete cycles over
// four closures on real containerd, runc and the shim, with the real
// `storepkg agent` collecting a small store filesystem kept over its high
// threshold. Every few cycles it samples what a leak would make grow
// (mounts, open files, goroutines, RSS, store views, GC roots, owner
// records, processes); at the end the chaos suite's end check runs. The
// figures go to a CSV, a PNG plot and soak.md (soak_report_test.go).

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/tmpfstest"
	"github.com/storepkg/storepkg/pkg/gcowner"
	"github.com/storepkg/storepkg/pkg/store/views"
)

// Soak settings. The store's filesystem is filled so that with every
// closure in it usage is soakPeakPercent, above the agent's high
// threshold (85%): each check after a few cycles collects down to 80%,
// deleting the closures of deleted pods, which later cycles fetch again.
// The headroom (12%, 61 MiB) holds the closures and what Nix's database
// adds: its WAL grows some 26 KB a cycle, since Nix's pragma
// wal_autocheckpoint(40000), which pkg/store keeps, checkpoints only
// every 40,000 pages (160 MiB) and the agent keeps the database open (on
// a 64 MiB store it took usage from 88% to 98% in 230 cycles).
// No minimum age: a closure comes back every few seconds, so with one its
// view would never be idle long enough to be pruned, and the collection
// would delete paths whose space the view's hard links keep.
const (
	soakStoreSize     = 512 << 20
	soakPeakPercent   = 88
	soakAgentInterval = "2s"
	soakAgentMinAge   = "0"
	soakSampleEvery   = 10 // cycles
)

// soakSample is one row of the soak's figures, taken after the pod of
// cycle Cycle was deleted.
type soakSample struct {
	Cycle           int
	Elapsed         time.Duration
	CycleSeconds    float64 // mean time of a cycle since the last sample
	Mounts          int     // under containerd's directories and the store root
	ContainerdFDs   int
	ContainerdRSS   int64
	AgentFDs        int
	AgentRSS        int64
	AgentGoroutines int   // go_goroutines of the agent's /metrics
	Views           int   // entries of the views directory (views, their locks, builds)
	Roots           int   // GC roots under gcroots/storepkg
	Owners          int   // owner records of those roots
	Shims           int   // storepkg shim processes of the Env
	Processes       int   // every process of the Env but containerd (shims included)
	Records         int   // fetch records in the status directory
	DBBytes         int64 // Nix's database with its WAL
	StoreUsage      float64
	StorePaths      int
	GCRuns          int // successful collections so far
	GCDeleted       int // paths they deleted so far
	Fetches         int // fetches the agent counted so far
}

// soakRun is what the report needs.
type soakRun struct {
	planned, done int
	started       time.Time
	wall          time.Duration
	failures      []string // failed starts and cycles, with their errors
	samples       []soakSample
	kinds         []string
	left          []string // what the end check found
	endChecked    bool
	agentEnd      map[string]float64
}

// TestSoak runs STOREPKG_SOAK_CYCLES cycles (`make soak`: 1000); without
// it the test does not run. STOREPKG_SOAK_MAX (a duration) stops starting
// cycles after that long; STOREPKG_SOAK_OUT is where the results go
// (default: the test's temporary directory).
func TestSoak(t *testing.T) {
	cycles, _ := strconv.Atoi(os.Getenv("STOREPKG_SOAK_CYCLES"))
	if cycles <= 0 {
		t.Skip("the soak runs with STOREPKG_SOAK_CYCLES set (make soak)")
	}
	var maxWall time.Duration
	if s := os.Getenv("STOREPKG_SOAK_MAX"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("STOREPKG_SOAK_MAX: %v", err)
		}
		maxWall = d
	}
	outDir := os.Getenv("STOREPKG_SOAK_OUT")
	if outDir == "" {
		outDir = t.TempDir()
	}
	setup(t)
	fx := fixture.fx

	run := &soakRun{planned: cycles, started: time.Now()}
	defer func() {
		run.wall = time.Since(run.started)
		if err := writeSoakReport(outDir, run); err != nil {
			t.Errorf("writing the soak's results: %v", err)
		}
		t.Logf("soak results in %s", outDir)
	}()

	storeRoot := tmpfstest.Mount(t, soakStoreSize)
	cache := serveFaultCache(t, fixture.cache)
	r := &chaosRun{t: t}
	env := r.start(chaosOptions{substituters: []string{cache.URL}, storeRoot: storeRoot})

	var libgreet string
	for _, p := range fx.Closure {
		if strings.HasSuffix(p, "-libgreet-1.0") {
			libgreet = p
		}
	}
	sleepCmd := []string{"sh", "-c", "echo up; exec sleep 3600"}
	hello, helloWant := helloCmd("a soak pod")
	kinds := []struct {
		name  string
		paths []string
		cmd   []string
		want  string
	}{
		{"hello+tools", []string{fx.Hello, fx.Tools}, hello, helloWant},
		{"tools", []string{fx.Tools}, sleepCmd, "up"},
		{"hello", []string{fx.Hello}, hello, helloWant},
		{"libgreet+tools", []string{libgreet, fx.Tools}, sleepCmd, "up"},
	}
	for _, k := range kinds {
		run.kinds = append(run.kinds, k.name)
	}
	// cycle runs one pod to its container's output and deletes it.
	cycle := func(name string, k int) {
		pod := env.PodConfig(name, "default", paths(kinds[k].paths...))
		podID, err := env.RunPodSandboxErr(critest.HandlerStorepkg, pod)
		if err != nil {
			run.failures = append(run.failures, fmt.Sprintf("%s: run pod: %v", name, err))
			t.Errorf("%s: %v", name, err)
			return
		}
		_, errs := runContainer(t, env, podID, pod, kinds[k].cmd, kinds[k].want, 2*time.Minute)
		for _, err := range errs {
			run.failures = append(run.failures, fmt.Sprintf("%s (%s): failed start: %v", name, kinds[k].name, err))
			t.Errorf("%s: failed start: %v", name, err)
		}
		deletePod(t, env, podID)
	}

	// Every closure once, then the store's filesystem filled to
	// soakPeakPercent: the peak, with every closure and view in it.
	for k := range kinds {
		cycle(fmt.Sprintf("warmup-%d", k), k)
	}
	os.Remove(filepath.Join(storeRoot, "nix/var/nix/db/reserved")) // real Nix's reserve, if it made one
	fillLeaving(t, r, storeRoot, soakStoreSize*(100-soakPeakPercent)/100)
	var fs syscall.Statfs_t
	if err := syscall.Statfs(storeRoot, &fs); err == nil {
		t.Logf("store filesystem after the warm-up and the filler: %.1f%% used", 100-float64(fs.Bavail)*100/float64(fs.Blocks))
	}

	agentProc := startAgent(t, "--root", storeRoot, "--status-dir", env.StatusDir,
		"--interval", soakAgentInterval, "--gc-min-age", soakAgentMinAge, "--kube-events", "false")
	agentPID := agentProc.cmd.Process.Pid

	last := time.Now()
	for i := 1; i <= cycles; i++ {
		if maxWall > 0 && time.Since(run.started) > maxWall {
			t.Logf("STOREPKG_SOAK_MAX %v reached after %d of %d cycles", maxWall, run.done, cycles)
			break
		}
		cycle(fmt.Sprintf("soak-%04d", i), i%len(kinds))
		run.done = i
		if i%soakSampleEvery == 0 || i == cycles {
			s := sampleSoak(t, env, storeRoot, agentProc, agentPID)
			s.Cycle, s.Elapsed = i, time.Since(run.started)
			n := i % soakSampleEvery
			if n == 0 {
				n = soakSampleEvery
			}
			s.CycleSeconds = time.Since(last).Seconds() / float64(n)
			last = time.Now()
			run.samples = append(run.samples, s)
			if i%(soakSampleEvery*10) == 0 {
				t.Logf("cycle %d: %.2fs/cycle, %d mounts, fds containerd %d agent %d, agent RSS %.1f MiB, %d goroutines, %d views, %d roots, store %.1f%%, %d collections deleted %d paths",
					i, s.CycleSeconds, s.Mounts, s.ContainerdFDs, s.AgentFDs, float64(s.AgentRSS)/(1<<20), s.AgentGoroutines, s.Views, s.Roots, s.StoreUsage, s.GCRuns, s.GCDeleted)
			}
		}
	}

	// The agent's own account: it collected, and nothing failed.
	m := agentProc.scrape(t)
	run.agentEnd = map[string]float64{
		"gc runs (success)":        m.Get("storepkg_gc_runs_total", "result", "success"),
		"gc runs (failure)":        m.Get("storepkg_gc_runs_total", "result", "failure"),
		"paths deleted":            m.Get("storepkg_gc_deleted_paths_total"),
		"bytes freed":              m.Get("storepkg_gc_freed_bytes_total"),
		"fetches (success)":        m.Get("storepkg_fetches_total", "result", "success"),
		"fetches (failure)":        m.Get("storepkg_fetches_total", "result", "failure"),
		"paths substituted":        m.Get("storepkg_substitutions_total"),
		"owner records unreadable": m.Get("storepkg_gc_owner_records_invalid"),
	}
	if run.agentEnd["gc runs (success)"] == 0 || run.agentEnd["paths deleted"] == 0 {
		t.Errorf("the agent did not collect under pressure: %v", run.agentEnd)
	}
	for _, k := range []string{"gc runs (failure)", "fetches (failure)", "owner records unreadable"} {
		if run.agentEnd[k] != 0 {
			t.Errorf("agent: %s = %v", k, run.agentEnd[k])
		}
	}
	agentProc.stop(t)

	for _, f := range r.undo {
		f()
	}
	r.undo = nil
	run.left = endCheck(t, r)
	run.endChecked = true

	for _, sr := range soakSeries {
		if !sr.checked {
			continue
		}
		if v := sr.verdict(run.samples); !v.flat {
			t.Errorf("%s is not flat: at most %.1f over the first 10%% of samples, up to %.1f over the last 10%% (allowed up to %.1f)",
				sr.name, v.firstMax, v.lastMax, v.limit)
		}
	}
}

// sampleSoak takes one sample of the Env, the store and the agent.
func sampleSoak(t *testing.T, env *critest.Env, storeRoot string, a *agentProcess, agentPID int) soakSample {
	t.Helper()
	var s soakSample
	s.Mounts = len(env.Mounts())
	if below, err := mountsBelow(storeRoot); err == nil {
		s.Mounts += len(below)
	}
	if pid := env.ContainerdPID(); pid != 0 {
		s.ContainerdFDs, s.ContainerdRSS = procFDs(pid), procRSS(pid)
	}
	s.AgentFDs, s.AgentRSS = procFDs(agentPID), procRSS(agentPID)
	m := a.scrape(t)
	s.AgentGoroutines = int(m.Get("go_goroutines"))
	s.StoreUsage = 100 * m.Get("storepkg_store_filesystem_usage_ratio")
	s.StorePaths = int(m.Get("storepkg_store_paths"))
	s.GCRuns = int(m.Get("storepkg_gc_runs_total", "result", "success"))
	s.GCDeleted = int(m.Get("storepkg_gc_deleted_paths_total"))
	s.Fetches = int(m.Get("storepkg_fetches_total", "result", "success") + m.Get("storepkg_fetches_total", "result", "failure"))
	s.Views = len(dirNames(filepath.Join(storeRoot, views.Dir)))
	s.Roots = len(dirNames(gcowner.RootsDir(storeRoot)))
	s.Owners = len(dirNames(filepath.Join(storeRoot, "nix/var/storepkg/owners")))
	s.Records = len(dirNames(env.StatusDir))
	dbDir := filepath.Join(storeRoot, "nix/var/nix/db")
	for _, name := range dirNames(dbDir) {
		if fi, err := os.Stat(filepath.Join(dbDir, name)); err == nil {
			s.DBBytes += fi.Size()
		}
	}
	for pid, cmd := range env.Processes() {
		if pid == agentPID { // its --status-dir is in the Env's directory
			continue
		}
		s.Processes++
		if strings.Contains(cmd, "containerd-shim-storepkg") {
			s.Shims++
		}
	}
	return s
}

// procFDs counts a process's open file descriptors (-1 if it is gone).
func procFDs(pid int) int {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(fds)
}

// procRSS is a process's resident set size in bytes (VmRSS), -1 if it
// is gone.
func procRSS(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return -1
}
