package fetchexec_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/fetchexec"
	"github.com/storepkg/storepkg/pkg/fetchslot"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// downloads serves a cache under one URL prefix per fetch (/a/, /b/,
// ...), holding every NAR back, and records how many fetches were
// downloading at once.
type downloads struct {
	mu       sync.Mutex
	inFlight map[string]int // NAR requests in flight by prefix
	most     int            // the most prefixes with NARs in flight at once
	seen     map[string]bool
	order    []string // prefixes in the order their first NAR was asked for
}

func serveSlow(t *testing.T, cache string, delay time.Duration) (string, *downloads) {
	d := &downloads{inFlight: map[string]int{}, seen: map[string]bool{}}
	url := nixtest.Serve(t, cache, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			prefix, rest, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
			r.URL.Path = "/" + rest
			if strings.HasPrefix(rest, "nar/") {
				d.mu.Lock()
				d.inFlight[prefix]++
				if !d.seen[prefix] {
					d.order = append(d.order, prefix)
				}
				d.seen[prefix] = true
				active := 0
				for _, n := range d.inFlight {
					if n > 0 {
						active++
					}
				}
				d.most = max(d.most, active)
				d.mu.Unlock()
				defer func() { d.mu.Lock(); d.inFlight[prefix]--; d.mu.Unlock() }()
				select {
				case <-time.After(delay):
				case <-r.Context().Done():
					return
				}
			}
			h.ServeHTTP(w, r)
		})
	})
	return url, d
}

func (d *downloads) started(prefix string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.seen[prefix]
}

func (d *downloads) mostAtOnce() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.most
}

// cliFetch is `storepkg fetch --json` run by hand as its own process,
// taking its slot itself; its JSON lines arrive on lines.
type cliFetch struct {
	cmd   *exec.Cmd
	lines chan fetchapi.Report
	done  chan error
}

func startCLIFetch(t *testing.T, bin string, args ...string) *cliFetch {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"fetch", "--json"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &cliFetch{cmd: cmd, lines: make(chan fetchapi.Report, 1000), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var rep fetchapi.Report
			if json.Unmarshal(sc.Bytes(), &rep) == nil {
				c.lines <- rep
			}
		}
		c.done <- cmd.Wait()
	}()
	t.Cleanup(func() { cmd.Process.Kill() })
	return c
}

// waitFor reads c's reports until one satisfies ok.
func (c *cliFetch) waitFor(t *testing.T, what string, ok func(fetchapi.Report) bool) fetchapi.Report {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case rep := <-c.lines:
			if ok(rep) {
				return rep
			}
		case err := <-c.done:
			t.Fatalf("%s: the fetch ended (%v)", what, err)
		case <-timeout:
			t.Fatalf("%s: not within 30s", what)
		}
	}
}

// TestSlotsAcrossProcesses: with one slot on the node, three fetches
// from independent processes (two storepkg fetch run by hand, one
// through Run as a shim runs it) download one at a time: the second and
// third report that they wait, a SIGKILL of the fetch holding the slot
// frees it, the others then fetch in the order they came, and a closure
// already valid needs no slot.
func TestSlotsAcrossProcesses(t *testing.T) {
	f := newFixture(t)
	bin := storepkgCLI(t)
	url, dl := serveSlow(t, f.cache, time.Second)
	slots := filepath.Join(t.TempDir(), "slots")
	roots := map[string]string{"a": t.TempDir(), "b": t.TempDir(), "c": t.TempDir()}
	cliArgs := func(name string) []string {
		return []string{"--root", roots[name], "--substituter", url + "/" + name, "--trusted-public-key", f.key.Public,
			"--fetch-slots", slots, "--max-concurrent-fetches", "1", f.root.Absolute()}
	}

	a := startCLIFetch(t, bin, cliArgs("a")...)
	for deadline := time.Now().Add(30 * time.Second); !dl.started("a"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("fetch a downloads nothing")
		}
	}
	b := startCLIFetch(t, bin, cliArgs("b")...)
	if w := b.waitFor(t, "b waiting", func(r fetchapi.Report) bool { return r.Waiting != nil }); w.Waiting.Slots != 1 {
		t.Errorf("b waits for %+v", w.Waiting)
	}

	cWaiting := make(chan fetchapi.Waiting, 1)
	cDone := make(chan error, 1)
	go func() {
		_, err := fetchexec.Run(context.Background(), fetchexec.Request{
			Binary: bin, StoreRoot: roots["c"], Substituters: []string{url + "/c"}, TrustedPublicKeys: []string{f.key.Public},
			Paths: []storepath.Path{f.root}, Slots: &fetchexec.Slots{Dir: slots, N: 1},
			Waiting: func(w fetchapi.Waiting) { cWaiting <- w },
		})
		cDone <- err
	}()
	select {
	case w := <-cWaiting:
		if w.Slots != 1 {
			t.Errorf("c waits for %+v", w)
		}
	case err := <-cDone:
		t.Fatalf("c ended without waiting: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("c does not say it waits")
	}
	if dl.started("b") || dl.started("c") {
		t.Fatal("a waiting fetch downloads")
	}

	// SIGKILL: a's process cannot release anything itself.
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	b.waitFor(t, "b's result after a was killed", func(r fetchapi.Report) bool { return r.Result != nil || r.Error != nil })
	if err := <-b.done; err != nil {
		t.Fatalf("b: %v", err)
	}
	select {
	case err := <-cDone:
		if err != nil {
			t.Fatalf("c: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("c did not end")
	}
	if n := dl.mostAtOnce(); n != 1 {
		t.Errorf("%d fetches downloaded at once, want 1", n)
	}
	dl.mu.Lock()
	if order := strings.Join(dl.order, " "); order != "a b c" {
		t.Errorf("fetches downloaded in the order %s, want a b c (the order they came)", order)
	}
	dl.mu.Unlock()
	nixtest.Verify(t, roots["b"])
	nixtest.Verify(t, roots["c"])

	// A closure already valid needs no slot, even with none free.
	held, err := fetchslot.Acquire(context.Background(), slots, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := fetchexec.Run(ctx, fetchexec.Request{
		Binary: bin, StoreRoot: roots["c"], Substituters: []string{url + "/c"}, TrustedPublicKeys: []string{f.key.Public},
		Paths: []storepath.Path{f.root}, Slots: &fetchexec.Slots{Dir: slots, N: 1},
		Waiting: func(fetchapi.Waiting) { t.Error("a fetch of a valid closure waited for a slot") },
	})
	if err != nil || len(res.Fetched) != 0 || len(res.Closure) != len(f.fx.Closure) {
		t.Errorf("valid closure with no slot free: %+v, %v", res, err)
	}

	// A waiting fetch whose caller gives up leaves nothing: no child, no
	// ticket in the queue.
	cancelCtx, cancelWait := context.WithCancel(context.Background())
	waiting := make(chan struct{})
	var children []int
	var mu sync.Mutex
	go func() { <-waiting; cancelWait() }()
	_, err = fetchexec.Run(cancelCtx, fetchexec.Request{
		Binary: bin, StoreRoot: t.TempDir(), Substituters: []string{url + "/d"}, TrustedPublicKeys: []string{f.key.Public},
		Paths: []storepath.Path{f.root}, Slots: &fetchexec.Slots{Dir: slots, N: 1},
		Waiting: func(fetchapi.Waiting) { close(waiting) },
		Start: func(cmd *exec.Cmd) (func() error, error) {
			err := cmd.Start()
			if err == nil {
				mu.Lock()
				children = append(children, cmd.Process.Pid)
				mu.Unlock()
			}
			return cmd.Wait, err
		},
	})
	var fail *fetchapi.Failure
	if !errors.As(err, &fail) || fail.Kind != fetchapi.KindCanceled {
		t.Errorf("cancelled while waiting: %v, want kind %s", err, fetchapi.KindCanceled)
	}
	if len(children) != 1 { // the check of the closure's validity, done
		t.Errorf("%d children started for a fetch that waited, want 1 (the validity check)", len(children))
	}
	if entries, _ := os.ReadDir(filepath.Join(slots, "queue")); len(entries) != 0 {
		t.Errorf("queue after the cancelled wait: %v", entries)
	}
	if dl.started("d") {
		t.Error("the cancelled fetch downloaded")
	}
}

// TestRunKeepsCredentialsOffCommandLine: a substituter URL with a
// password reaches the child on its stdin: while the child runs, neither
// its /proc/PID/cmdline nor its environment shows the password, and the
// fetch authenticates against a cache that requires it.
func TestRunKeepsCredentialsOffCommandLine(t *testing.T) {
	const password = "pw-4f1c9e"
	f := newFixture(t)
	url := nixtest.Serve(t, f.cache, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != "nixuser" || p != password {
				http.Error(w, "who are you", http.StatusUnauthorized)
				return
			}
			if strings.HasPrefix(r.URL.Path, "/nar/") {
				time.Sleep(500 * time.Millisecond) // the child runs while we look
			}
			h.ServeHTTP(w, r)
		})
	})
	var (
		mu      sync.Mutex
		pid     int
		checked bool
	)
	look := func() {
		mu.Lock()
		defer mu.Unlock()
		if checked || pid == 0 {
			return
		}
		checked = true
		for _, file := range []string{"cmdline", "environ"} {
			data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), file))
			if err != nil {
				t.Errorf("reading the running child's %s: %v", file, err)
				continue
			}
			if strings.Contains(string(data), password) {
				t.Errorf("the child's /proc/PID/%s shows the password: %q", file, data)
			}
			if file == "cmdline" && !strings.Contains(string(data), "--cache-config\x00-\x00") {
				t.Errorf("the child's command line: %q", data)
			}
		}
	}
	res, err := fetchexec.Run(context.Background(), fetchexec.Request{
		Binary: storepkgCLI(t), StoreRoot: t.TempDir(), Paths: []storepath.Path{f.root},
		Substituters:      []string{strings.Replace(url, "://", "://nixuser:"+password+"@", 1)},
		TrustedPublicKeys: []string{f.key.Public},
		Start: func(cmd *exec.Cmd) (func() error, error) {
			err := cmd.Start()
			if err == nil {
				mu.Lock()
				pid = cmd.Process.Pid
				mu.Unlock()
			}
			return cmd.Wait, err
		},
		Progress: func(fetchapi.Progress) { look() },
	})
	if err != nil {
		t.Fatalf("fetch with credentials: %v", err)
	}
	if !checked {
		t.Fatal("the child was never seen running")
	}
	if len(res.Fetched) != len(f.fx.Closure) {
		t.Errorf("fetched %d of %d paths", len(res.Fetched), len(f.fx.Closure))
	}
}
