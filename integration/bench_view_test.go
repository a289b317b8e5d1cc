package integration

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/benchtest"
	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/pkg/store/views"
)

// BenchmarkViewCost, the store view's share of a cold pod start in
// `make bench`: a pod (crictl runp to its first output line) on the
// 100,000-file closure of TestManyFilesClosure plus the fixture's
// program, the closure already in the node store, with its store view
// removed before the start (cold: the shim builds it) or kept (warm).
// The view's build time comes from the shim's own log line ("store view
// built"). Cold and warm alternate, STOREPKG_BENCH_RUNS rounds (default
// 5), medians. Run with -benchtime 1x.
func BenchmarkViewCost(b *testing.B) {
	setup(b)
	mf := writeManyFiles(b)
	url, _, _ := serveCache(b)
	synthetic := benchtest.ServeCache(b, mf.dir)
	env := critest.Start(b, critest.Options{
		ShimPath: fixture.shim,
		StorepkgOptions: map[string]any{
			"Substituters":      []string{url, synthetic.URL},
			"TrustedPublicKeys": []string{fixture.key.Public, mf.key},
		},
		CrictlTimeout: 5 * time.Minute,
	})
	fx := fixture.fx
	spec := podSpec{
		label:       "storepkg",
		handler:     critest.HandlerStorepkg,
		annotations: paths(mf.root.Absolute(), fx.Hello, fx.Tools),
		image:       critest.PauseImage,
	}
	res := benchtest.ViewResult{Paths: len(mf.all), Files: mf.files, Load: map[string]string{"start": benchtest.LoadAvg()}}
	run := func(tag string) (benchtest.PodRun, *viewBuild) {
		s := spec
		s.command = []string{fx.Hello + "/bin/hello-dyn", tag}
		logStart := fileSize(b, env.LogPath)
		busy := waitIdle()
		r, err := startPod(env, s, tag, "hello from "+tag)
		if err != nil {
			b.Fatalf("%s: %v", tag, err)
		}
		r.Busy = busy
		removePod(b, env, r.PodID)
		vb := lastViewBuild(b, env.LogPath, logStart)
		b.Logf("%s: %.0f ms (runp %.0f, create %.0f, start %.0f, output %.0f); view built: %+v", tag, r.Total, r.Runp, r.Create, r.Start, r.Output, vb)
		return r.PodRun, vb
	}
	// The fetch, outside the measurement.
	run("fetch")
	runs := benchtest.Runs(5)
	for i := range runs {
		for k := range 2 {
			if (i+k)%2 == 0 {
				if _, err := views.Prune(context.Background(), env.StoreRoot, views.PruneOptions{Unused: true}); err != nil {
					b.Fatal(err)
				}
				r, vb := run(fmt.Sprintf("cold-%d", i))
				if vb == nil {
					b.Fatalf("cold-%d: the shim's log says no store view was built", i)
				}
				res.Cold = append(res.Cold, r)
				res.BuildMS = append(res.BuildMS, vb.ms)
				res.Linked, res.Bound = vb.files, vb.bound
			} else {
				r, vb := run(fmt.Sprintf("warm-%d", i))
				if vb != nil {
					b.Fatalf("warm-%d: the view was built again: %+v", i, vb)
				}
				res.Warm = append(res.Warm, r)
			}
		}
	}
	res.Runs = runs
	res.ColdMS, res.WarmMS = medianTotal(res.Cold), medianTotal(res.Warm)
	res.MedianMS = benchtest.Median(res.BuildMS)
	res.Share = res.MedianMS / res.ColdMS
	res.Load["end"] = benchtest.LoadAvg()
	b.ReportMetric(res.ColdMS, "ms-cold")
	b.ReportMetric(res.WarmMS, "ms-warm")
	b.ReportMetric(res.MedianMS, "ms-view-build")
	b.ReportMetric(100*res.Share, "%-view-share")
	b.ReportMetric(0, "ns/op")
	benchtest.WriteResult(b, "view", res)
}

func fileSize(b *testing.B, p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		b.Fatal(err)
	}
	return fi.Size()
}

// viewBuild is the shim's log line for a store view it built.
type viewBuild struct {
	ms           float64
	files, bound int
}

var viewBuiltLine = regexp.MustCompile(`msg="storepkg: store view built[^"]*"(.*)`)
var logField = regexp.MustCompile(`\b(duration|files|bound)=(\S+)`)

// lastViewBuild finds the last "store view built" line in containerd's
// log (where the shims' logs go) after offset.
func lastViewBuild(b *testing.B, logPath string, offset int64) *viewBuild {
	b.Helper()
	data, err := os.ReadFile(logPath)
	if err != nil {
		b.Fatal(err)
	}
	lines := viewBuiltLine.FindAllSubmatch(data[offset:], -1)
	if len(lines) == 0 {
		return nil
	}
	vb := &viewBuild{}
	for _, f := range logField.FindAllSubmatch(lines[len(lines)-1][1], -1) {
		v := string(f[2])
		switch string(f[1]) {
		case "duration":
			d, err := time.ParseDuration(v)
			if err != nil {
				b.Fatalf("view build duration %q: %v", v, err)
			}
			vb.ms = ms(d)
		case "files":
			vb.files, _ = strconv.Atoi(v)
		case "bound":
			vb.bound, _ = strconv.Atoi(v)
		}
	}
	return vb
}
