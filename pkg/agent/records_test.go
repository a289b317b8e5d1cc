package agent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/storepkg/storepkg/internal/metricstest"
	"github.com/storepkg/storepkg/pkg/fetchrecord"
	"github.com/storepkg/storepkg/pkg/procid"
)

// gather reads the agent's metrics without HTTP.
func gather(t *testing.T, a *Agent) metricstest.Families {
	t.Helper()
	fams, err := a.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := metricstest.Families{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// TestStatusDirHousekeeping covers what real shims rarely produce (the
// shim integration tests in pkg/shim cover the records they write): a
// record whose writer died, one from another PID namespace that stopped
// reporting, unreadable files, temporary files left behind, a consumed
// record that reappears, and a directory that does not exist yet.
func TestStatusDirHousekeeping(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "fetches")
	log := logrus.New()
	log.SetOutput(os.Stderr)
	a, err := New(ctx, Config{StoreRoot: t.TempDir(), StatusDir: dir, StaleAfter: time.Minute, Log: logrus.NewEntry(log)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.store.Close()
	now := time.Now()

	a.records.poll(ctx, now) // no directory yet: nothing to do, no error
	if got := gather(t, a).Get("storepkg_fetches_in_progress"); got != 0 {
		t.Errorf("fetches_in_progress %v without a directory", got)
	}

	// A writer that died mid-fetch.
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	dead := procid.Self()
	dead.PID = cmd.Process.Pid
	dead.StartTicks = 0
	cmd.Process.Kill()
	cmd.Wait()
	foreign := procid.ID{PID: 1234, PIDNamespace: "pid:[1]"}
	base := fetchrecord.Record{Pod: fetchrecord.Pod{Namespace: "ns", Name: "p", UID: "u"}, Roots: []string{"/nix/store/x-a"},
		Start: now.Add(-3 * time.Minute), Updated: now.Add(-2 * time.Minute)}
	write := func(id string, edit func(r *fetchrecord.Record)) {
		r := base
		r.ID = id
		edit(&r)
		if err := fetchrecord.Write(dir, &r); err != nil {
			t.Fatal(err)
		}
	}
	write("dead", func(r *fetchrecord.Record) {
		r.State, r.Writer = fetchrecord.Fetching, dead
		r.Caches = map[string]int64{"http://c": 100}
		r.Paths.Fetched = 2
	})
	write("foreign-stale", func(r *fetchrecord.Record) { r.State, r.Writer = fetchrecord.Fetching, foreign })
	write("foreign-live", func(r *fetchrecord.Record) {
		r.State, r.Writer, r.Updated = fetchrecord.Fetching, foreign, now.Add(-10*time.Second)
	})
	write("me", func(r *fetchrecord.Record) { r.State, r.Writer = fetchrecord.Fetching, procid.Self() })
	write("done", func(r *fetchrecord.Record) {
		r.State, r.Writer, r.End = fetchrecord.Done, procid.Self(), now.Add(-time.Minute)
		r.Caches = map[string]int64{"http://c": 50, "peer:node-b": 70, "peer:node-c": 5}
		r.Paths.Fetched = 1
	})
	os.WriteFile(filepath.Join(dir, "garbage.json"), []byte("{not json"), 0o644)
	os.WriteFile(filepath.Join(dir, ".old.tmp"), nil, 0o644)
	os.Chtimes(filepath.Join(dir, ".old.tmp"), now.Add(-time.Hour), now.Add(-time.Hour))
	os.WriteFile(filepath.Join(dir, ".new.tmp"), nil, 0o644)

	a.records.poll(ctx, now)
	m := gather(t, a)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"storepkg_fetches_total", []string{"result", "success"}, 1},
		{"storepkg_fetches_total", []string{"result", "failure"}, 2},
		{"storepkg_fetch_failures_total", []string{"reason", "aborted"}, 2},
		{"storepkg_fetches_in_progress", nil, 2},
		{"storepkg_substitutions_total", nil, 3},
		{"storepkg_fetched_bytes_total", []string{"cache", "http://c", "source", "upstream"}, 150},
		// Every peer under one label value, whatever the node count.
		{"storepkg_fetched_bytes_total", []string{"cache", "peer", "source", "peer"}, 75},
		{"storepkg_fetched_bytes_total", []string{"source", "peer"}, 75},
		{"storepkg_status_records_discarded_total", []string{"cause", "unreadable"}, 1},
		{"storepkg_status_records_discarded_total", []string{"cause", "stale_temporary"}, 1},
	} {
		if got := m.Get(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	var left []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if want := []string{".new.tmp", "foreign-live.json", "me.json"}; !slices.Equal(left, want) {
		t.Errorf("left in the directory: %v, want %v", left, want)
	}

	// A consumed record that reappears (its writer was not dead after
	// all) is removed, not counted again.
	write("dead", func(r *fetchrecord.Record) { r.State, r.Writer = fetchrecord.Done, dead })
	a.records.poll(ctx, now.Add(time.Second))
	if got := gather(t, a).Get("storepkg_fetches_total", "result", "success"); got != 1 {
		t.Errorf("a reappearing record counted: fetches_total{success} = %v", got)
	}
	if _, err := os.Stat(fetchrecord.File(dir, "dead")); !os.IsNotExist(err) {
		t.Errorf("the reappearing record is still there: %v", err)
	}
}
