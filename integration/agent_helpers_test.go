package integration

// Helpers for the scenarios with the node agent (`storepkg agent` as a
// process: start, scrape, stop), the fetch records it consumes, and caches
// that count what they serve.

import (
	"bufio"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/internal/metricstest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/fetchrecord"
	"github.com/storepkg/storepkg/pkg/narinfo"
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
	dir = filepath.Join(t.TempDir(), seed)
	root, all, key, err := writeSynthetic(dir, seed, n)
	if err != nil {
		t.Fatal(err)
	}
	return dir, root, all, key
}

// writeSynthetic writes at dir a cache, signed by a new key, with a
// synthetic closure of n paths.
func writeSynthetic(dir, seed string, n int) (root storepath.Path, all []storepath.Path, key narinfo.SecretKey, err error) {
	_, priv, _ := ed25519.GenerateKey(nil)
	key = narinfo.SecretKey{Name: seed + "-1", Key: priv}
	w, err := cachetest.NewWriter(dir, key, true)
	if err != nil {
		return "", nil, key, err
	}
	root, all, err = w.Synthetic(seed, n)
	return root, all, key, err
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

// processAlive says whether pid runs (a zombie does not).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z") && !strings.HasPrefix(rest, "X")
}
