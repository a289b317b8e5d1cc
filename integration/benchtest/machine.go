package benchtest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cpuTimes reads the aggregate cpu line of /proc/stat: idle+iowait and total.
func cpuTimes() (idle, total uint64) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	fields := strings.Fields(line)
	for i, f := range fields[1:] {
		if i >= 8 {
			break
		}
		v, _ := strconv.ParseUint(f, 10, 64)
		total += v
		if i == 3 || i == 4 {
			idle += v
		}
	}
	return idle, total
}

// WaitIdle waits, up to max, for a window of the given length in which
// the CPUs were at least 90% idle: other work on a shared machine skews
// timings. It reports whether it saw one.
func WaitIdle(max, window time.Duration) bool {
	deadline := time.Now().Add(max)
	for {
		i0, t0 := cpuTimes()
		time.Sleep(window)
		i1, t1 := cpuTimes()
		if t1 > t0 && (i1-i0)*100 >= (t1-t0)*90 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// LoadAvg returns /proc/loadavg's first three fields.
func LoadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// Median of xs (the lower middle for an even count); 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[(len(s)-1)/2]
}

// Runs is the number of measured runs a benchmark should make: the
// environment variable STOREPKG_BENCH_RUNS, else def.
func Runs(def int) int {
	if n, err := strconv.Atoi(os.Getenv("STOREPKG_BENCH_RUNS")); err == nil && n > 0 {
		return n
	}
	return def
}

// IdleWait is how long a benchmark waits for an idle machine before each
// measurement: STOREPKG_BENCH_IDLE_WAIT (a Go duration), else 30s.
func IdleWait() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("STOREPKG_BENCH_IDLE_WAIT")); err == nil {
		return d
	}
	return 30 * time.Second
}

// WriteResult writes v as JSON to $STOREPKG_BENCH_OUT/<name>.json when
// that variable is set (hack/bench.sh sets it and builds the results
// table from the files), and logs it otherwise.
func WriteResult(t testing.TB, name string, v any) {
	t.Helper()
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("STOREPKG_BENCH_OUT")
	if dir == "" {
		t.Logf("%s: %s", name, data)
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".json"), append(data, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}
