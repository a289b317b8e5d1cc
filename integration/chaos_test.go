package integration

// The chaos suite (TestChaos, `make chaos`): faults and load on real
// containerd, runc, crictl, the shim and its fetch children, and a store
// Nix verifies. Each scenario is a subtest in its own containerd Env; each
// ends with the same check (endCheck), and the suite prints a table:
// scenario, held or not, time to recover, what was left. docs/reliability.md
// states what each scenario shows.

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	_ "modernc.org/sqlite" // the test's own view of Nix's database

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/agent"
	"github.com/storepkg/storepkg/pkg/gcowner"
	"github.com/storepkg/storepkg/pkg/store/views"
)

// chaosScenario is one row of the table.
type chaosScenario struct {
	name string
	run  func(t *testing.T, r *chaosRun)
}

// chaosRun is what a scenario reports: its Env, when the fault struck and
// when the system had recovered from it.
type chaosRun struct {
	t         *testing.T
	env       *critest.Env
	storeRoot string
	statusDir string
	faultAt   time.Time
	recovered time.Duration
	notes     []string
	undo      []func() // run before the end check, even after a failure
}

// beforeEnd registers f to undo a fault (free the disk) before the end
// check, whether the scenario got that far or not.
func (r *chaosRun) beforeEnd(f func()) { r.undo = append(r.undo, f) }

// chaosRow is a line of the table.
type chaosRow struct {
	name      string
	held      bool
	recovered time.Duration
	left      []string
	notes     []string
	took      time.Duration
}

var chaosTable struct {
	mu   sync.Mutex
	rows []chaosRow
}

// TestChaos runs every scenario of the chaos suite (chaos_*_test.go) and
// prints the table. `go test -run 'TestChaos/<name>'` runs one.
func TestChaos(t *testing.T) {
	setup(t)
	start := time.Now()
	var all []chaosScenario
	all = append(all, killScenarios()...)
	all = append(all, rebootScenarios()...)
	all = append(all, diskScenarios()...)
	all = append(all, flakyScenarios()...)
	all = append(all, loadScenarios()...)
	for _, sc := range all {
		t.Run(sc.name, func(t *testing.T) {
			r := &chaosRun{t: t}
			began := time.Now()
			var left []string
			defer func() {
				for _, f := range r.undo {
					f()
				}
				if r.env != nil {
					left = endCheck(t, r)
				}
				chaosTable.mu.Lock()
				chaosTable.rows = append(chaosTable.rows, chaosRow{
					name: sc.name, held: !t.Failed(), recovered: r.recovered,
					left: left, notes: r.notes, took: time.Since(began),
				})
				chaosTable.mu.Unlock()
			}()
			sc.run(t, r)
		})
	}
	table := formatChaosTable(time.Since(start))
	t.Logf("\n%s", table)
	// `make chaos` prints the table from this file (go test shows t.Logf
	// only with -v or on failure, among every scenario's logs).
	if file := os.Getenv("STOREPKG_CHAOS_TABLE"); file != "" {
		if err := os.WriteFile(file, []byte(table), 0o644); err != nil {
			t.Errorf("writing the table: %v", err)
		}
	}
}

func formatChaosTable(total time.Duration) string {
	chaosTable.mu.Lock()
	defer chaosTable.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "\nchaos: %d scenarios in %v\n\n", len(chaosTable.rows), total.Round(time.Second))
	fmt.Fprintf(&b, "%-34s %-5s %-10s %-8s %s\n", "scenario", "held", "recovered", "took", "left after pods gone and the agent ran")
	held := 0
	for _, row := range chaosTable.rows {
		h := "no"
		if row.held {
			h, held = "yes", held+1
		}
		rec := "-"
		if row.recovered > 0 {
			rec = row.recovered.Round(10 * time.Millisecond).String()
		}
		left := "nothing"
		if len(row.left) > 0 {
			left = strings.Join(row.left, "; ")
		}
		fmt.Fprintf(&b, "%-34s %-5s %-10s %-8s %s\n", row.name, h, rec, row.took.Round(100*time.Millisecond), left)
		for _, n := range row.notes {
			fmt.Fprintf(&b, "%-34s %s\n", "", "  "+n)
		}
	}
	fmt.Fprintf(&b, "\n%d of %d held\n", held, len(chaosTable.rows))
	return b.String()
}

// note adds a line under the scenario's row.
func (r *chaosRun) note(format string, args ...any) {
	r.t.Helper()
	s := fmt.Sprintf(format, args...)
	r.t.Log(s)
	r.notes = append(r.notes, s)
}

// fault marks the moment the fault struck (or, for one that lasts, such
// as a full disk, the moment it ended); markRecovered, the moment the
// system is back (the pod's container runs again).
func (r *chaosRun) fault() { r.faultAt = time.Now() }

func (r *chaosRun) markRecovered() {
	if !r.faultAt.IsZero() {
		r.recovered = time.Since(r.faultAt)
	}
}

// chaosOptions configure a scenario's Env.
type chaosOptions struct {
	substituters []string
	keys         []string
	storeRoot    string // "" : the Env's own directory
	more         map[string]any
	// crictlTimeout bounds each CRI call as kubelet's
	// --runtime-request-timeout does; default critest's 60s.
	crictlTimeout time.Duration
}

// start starts the scenario's containerd with the storepkg runtime.
func (r *chaosRun) start(o chaosOptions) *critest.Env {
	r.t.Helper()
	if len(o.keys) == 0 {
		o.keys = []string{fixture.key.Public}
	}
	opts := map[string]any{
		"Substituters":      o.substituters,
		"TrustedPublicKeys": o.keys,
	}
	if o.storeRoot != "" {
		opts["StoreRoot"] = o.storeRoot
	}
	for k, v := range o.more {
		opts[k] = v
	}
	r.env = critest.Start(r.t, critest.Options{ShimPath: fixture.shim, StorepkgOptions: opts, CrictlTimeout: o.crictlTimeout})
	r.storeRoot = r.env.StoreRoot
	if o.storeRoot != "" {
		r.storeRoot = o.storeRoot
	}
	r.statusDir = r.env.StatusDir
	return r.env
}

// runContainer is kubelet's part: create the container (again on
// failure, as kubelet retries a failed CreateContainer), start it, and
// wait for its log to show want. It returns the container's ID and the
// errors of the failed attempts.
func runContainer(t *testing.T, env *critest.Env, podID string, pod map[string]any, cmd []string, want string, timeout time.Duration) (string, []error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var errs []error
	for attempt := 0; ; attempt++ {
		ctr := env.ContainerConfig("app", critest.PauseImage, cmd)
		ctr["metadata"] = map[string]any{"name": "app", "attempt": attempt}
		id, err := env.CreateContainer(t, podID, ctr, pod)
		if err == nil {
			if _, err = env.CrictlErr("start", id); err != nil {
				env.CrictlErr("rm", "--force", id)
			}
		}
		if err == nil {
			if want != "" {
				env.WaitLogs(t, id, want, 30*time.Second)
			}
			return id, errs
		}
		errs = append(errs, err)
		if time.Now().After(deadline) {
			t.Fatalf("container of pod %s not running after %v; errors:\n%v", podID, timeout, errs)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// helloCmd runs the fixture's dynamically linked program, which needs
// its whole closure.
func helloCmd(who string) (cmd []string, want string) {
	return []string{"hello-dyn", who}, "hello from " + who + ", linked dynamically"
}

// deletePod stops and removes a pod, retrying while containerd settles
// (after a killed shim or a restart).
func deletePod(t *testing.T, env *critest.Env, podID string) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if _, err = env.CrictlErr("stopp", podID); err != nil {
			continue
		}
		if _, err = env.CrictlErr("rmp", "--force", podID); err == nil {
			return
		}
	}
	t.Errorf("removing pod %s: %v", podID, err)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// endCheck is every scenario's last word, once its pods are gone (it
// removes any the scenario left, as kubelet would): no process of the
// Env, no mount, no task bundle; real Nix verifies the store; one pass of
// the node agent's loop (as the DaemonSet runs it, store not full, its
// minimum age passed) removes the GC roots and owner records of gone
// shims and the temporary entries of killed fetch children; one collection as the
// agent runs it under disk pressure (store.CollectNodeGarbage, no
// minimum age) removes every view; every entry of nix/store is then a
// valid path, and Nix verifies the store again. It returns what was
// left, for the table; each is also a test error.
func endCheck(t *testing.T, r *chaosRun) (left []string) {
	t.Helper()
	env := r.env
	leave := func(format string, args ...any) {
		t.Helper()
		s := fmt.Sprintf(format, args...)
		t.Errorf("end check: %s", s)
		left = append(left, s)
	}
	if out, err := env.CrictlErr("pods", "--quiet"); err == nil {
		if ids := strings.Fields(out); len(ids) > 0 {
			t.Logf("end check: removing %d pods the scenario left", len(ids))
			for _, id := range ids {
				deletePod(t, env, id)
			}
		}
	} else {
		leave("crictl pods: %v", err)
	}

	// Processes: shims, runc, containers, fetch children.
	var procs map[int]string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		procs = env.Processes()
		if child := fetchChild(r.storeRoot); child != 0 {
			procs[child] = "storepkg fetch (store " + r.storeRoot + ")"
		}
		if len(procs) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for pid, cmd := range procs {
		leave("process %d: %s", pid, cmd)
	}
	// Mounts, bundles.
	mounts := env.Mounts()
	if !strings.HasPrefix(r.storeRoot, env.Dir+"/") {
		all, _ := mountsBelow(r.storeRoot)
		mounts = append(mounts, all...)
	}
	for _, m := range mounts {
		leave("mount %s", m)
	}
	bundles, _ := os.ReadDir(filepath.Join(env.StateDir, "io.containerd.runtime.v2.task", critest.Namespace))
	for _, b := range bundles {
		leave("task bundle %s", b.Name())
	}
	if _, err := os.Stat(filepath.Join(r.storeRoot, "nix/var/nix/db/db.sqlite")); err != nil {
		// Nothing was ever fetched (a scenario that failed early).
		return left
	}
	if msg := nixVerify(r.storeRoot); msg != "" {
		leave("before the agent ran, %s", msg)
	}

	// One pass of the agent's loop, with the DaemonSet's thresholds, as
	// it runs once the minimum age (for temporary trees of killed
	// fetches too) has passed.
	runAgentPass(t, r, agent.Config{MinAge: -1})
	leaveAll := func(what string, items []string) {
		t.Helper()
		if len(items) > 0 {
			leave("%d %s (%s)", len(items), what, summarize(items, 2))
		}
	}
	leaveAll("GC roots", dirNames(gcowner.RootsDir(r.storeRoot)))
	leaveAll("owner records", dirNames(filepath.Join(r.storeRoot, "nix/var/storepkg/owners")))
	var tmps []string
	for _, e := range storeEntries(t, r.storeRoot) {
		if strings.HasSuffix(e, ".storepkg-tmp") {
			tmps = append(tmps, e)
		}
	}
	leaveAll("temporary entries in nix/store after the agent's pass", tmps)

	// One collection as the agent runs it when the store's filesystem is
	// full: every threshold crossed, no minimum age.
	runAgentPass(t, r, agent.Config{HighPercent: 0.001, LowPercent: 0, MinAge: -1})
	leaveAll("entries in the views directory after a collection", dirNames(filepath.Join(r.storeRoot, views.Dir)))
	valid := validPaths(t, r.storeRoot)
	var invalid []string
	for _, e := range storeEntries(t, r.storeRoot) {
		if e == ".links" || strings.HasSuffix(e, ".lock") && valid[strings.TrimSuffix(e, ".lock")] {
			continue // Nix's own: its optimiser's links, lock files of valid paths
		}
		if !valid[e] {
			invalid = append(invalid, e)
		}
	}
	leaveAll("entries of nix/store that are not valid paths after a collection", invalid)
	if msg := nixVerify(r.storeRoot); msg != "" {
		leave("after the agent ran, %s", msg)
	}
	return left
}

// runAgentPass runs the node agent's loop (pkg/agent, as `storepkg agent`
// runs it) until its first check of the store is done.
func runAgentPass(t *testing.T, r *chaosRun, cfg agent.Config) {
	t.Helper()
	cfg.StoreRoot, cfg.StatusDir, cfg.Interval = r.storeRoot, r.statusDir, time.Hour
	runs := make(chan agent.GCRun, 1)
	cfg.OnGC = func(run agent.GCRun) {
		select {
		case runs <- run:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := agent.New(ctx, cfg)
	if err != nil {
		t.Errorf("end check: agent: %v", err)
		return
	}
	if err := a.Start(ctx); err != nil {
		t.Errorf("end check: agent: %v", err)
		return
	}
	select {
	case run := <-runs:
		if run.Err != nil {
			t.Errorf("end check: the agent's pass failed: %v", run.Err)
		}
	case <-time.After(2 * time.Minute):
		t.Errorf("end check: the agent made no pass in 2 minutes")
	}
	cancel()
	a.Wait()
}

// nixVerify runs `nix-store --verify --check-contents` and returns what
// it found wrong ("" when the store is right).
func nixVerify(root string) string {
	out, err := nixtest.Cmd("nix-store", "--store", nixtest.StoreURI(root), "--verify", "--check-contents").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("nix-store --verify --check-contents: %v: %s", err, strings.TrimSpace(string(out)))
	}
	for _, line := range strings.Split(string(out), "\n") {
		for _, p := range []string{"was modified!", "disappeared", "not all store errors were fixed", "error:"} {
			if strings.Contains(line, p) {
				return "nix-store --verify --check-contents: " + line
			}
		}
	}
	return ""
}

// validPaths reads the valid paths (base names) from Nix's database
// directly, independently of pkg/store.
func validPaths(t *testing.T, root string) map[string]bool {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(root, "nix/var/nix/db/db.sqlite")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query("select path from ValidPaths")
	if err != nil {
		t.Fatalf("reading ValidPaths: %v", err)
	}
	defer rows.Close()
	valid := map[string]bool{}
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			t.Fatal(err)
		}
		valid[strings.TrimPrefix(p, "/nix/store/")] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return valid
}

// holdDBWriteLock takes SQLite's write lock on Nix's database, as a
// writer (Nix, another fetch) does while it registers paths: a fetch
// child that has renamed its paths into place waits in Register until
// release. The lock is released at cleanup at the latest.
func holdDBWriteLock(t *testing.T, root string) (release func()) {
	t.Helper()
	ctx := context.Background()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(root, "nix/var/nix/db/db.sqlite")+"?_pragma=busy_timeout(30000)")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "begin immediate"); err != nil {
		t.Fatalf("taking the database's write lock: %v", err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			conn.ExecContext(ctx, "rollback")
			conn.Close()
			db.Close()
		})
	}
	t.Cleanup(release)
	return release
}

// storeEntries lists nix/store under root, sorted.
func storeEntries(t *testing.T, root string) []string {
	t.Helper()
	names := nixtest.StoreEntries(t, root)
	sort.Strings(names)
	return names
}

// dirNames lists a directory ("" entries when it does not exist).
func dirNames(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// mountsBelow lists the mount points strictly below dir.
func mountsBelow(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out, nil
}

// invalidEntries lists the entries of nix/store that are not valid
// paths (nor lock files), e.g. a tree renamed into place whose
// registration has not happened.
func invalidEntries(t *testing.T, root string) []string {
	t.Helper()
	valid := validPaths(t, root)
	var out []string
	for _, e := range storeEntries(t, root) {
		if strings.HasSuffix(e, ".lock") || strings.HasSuffix(e, ".storepkg-tmp") || strings.HasPrefix(e, ".") || valid[e] {
			continue
		}
		out = append(out, e)
	}
	return out
}
