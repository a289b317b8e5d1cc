package integration

// The soak's results: soak-<date>.csv (every sample), soak-<date>.png
// (one panel per figure over the cycles) and soak.md (the verdict).

import (
	"encoding/csv"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/storepkg/storepkg/integration/critest"
)

// soakFigure is one column of the CSV and one panel of the plot.
type soakFigure struct {
	key, name string
	get       func(soakSample) float64
	// checked figures must be flat; slack is the absolute growth allowed
	// beyond 10%: one more mount, process, root; two more fds or
	// goroutines (a connection); 2 MiB of RSS (the Go heap's growth
	// step); a view and its lock for each closure (the collections remove
	// them only when they run); a record for a pod's prefetch and start.
	checked bool
	slack   float64
}

const soakMiB = 1 << 20

var soakSeries = []soakFigure{
	{key: "mounts", name: "mounts (containerd's dirs, store root)", get: func(s soakSample) float64 { return float64(s.Mounts) }, checked: true, slack: 1},
	{key: "containerd_fds", name: "containerd open fds", get: func(s soakSample) float64 { return float64(s.ContainerdFDs) }, checked: true, slack: 2},
	{key: "agent_fds", name: "agent open fds", get: func(s soakSample) float64 { return float64(s.AgentFDs) }, checked: true, slack: 2},
	{key: "agent_rss_mib", name: "agent RSS (MiB)", get: func(s soakSample) float64 { return float64(s.AgentRSS) / soakMiB }, checked: true, slack: 2},
	{key: "agent_goroutines", name: "agent goroutines", get: func(s soakSample) float64 { return float64(s.AgentGoroutines) }, checked: true, slack: 2},
	{key: "views", name: "views dir entries", get: func(s soakSample) float64 { return float64(s.Views) }, checked: true, slack: 8},
	{key: "gc_roots", name: "GC roots (gcroots/storepkg)", get: func(s soakSample) float64 { return float64(s.Roots) }, checked: true, slack: 1},
	{key: "owner_records", name: "owner records", get: func(s soakSample) float64 { return float64(s.Owners) }, checked: true, slack: 1},
	{key: "shims", name: "shim processes", get: func(s soakSample) float64 { return float64(s.Shims) }, checked: true, slack: 1},
	{key: "processes", name: "Env processes (not containerd, the agent)", get: func(s soakSample) float64 { return float64(s.Processes) }, checked: true, slack: 1},
	{key: "fetch_records", name: "fetch records", get: func(s soakSample) float64 { return float64(s.Records) }, checked: true, slack: 2},
	{key: "containerd_rss_mib", name: "containerd RSS (MiB)", get: func(s soakSample) float64 { return float64(s.ContainerdRSS) / soakMiB }},
	{key: "cycle_s", name: "seconds per cycle", get: func(s soakSample) float64 { return s.CycleSeconds }},
	{key: "store_usage_pct", name: "store filesystem usage (%)", get: func(s soakSample) float64 { return s.StoreUsage }},
	{key: "db_mib", name: "Nix database + WAL (MiB)", get: func(s soakSample) float64 { return float64(s.DBBytes) / soakMiB }},
	{key: "store_paths", name: "valid store paths", get: func(s soakSample) float64 { return float64(s.StorePaths) }},
	{key: "gc_runs", name: "collections (cumulative)", get: func(s soakSample) float64 { return float64(s.GCRuns) }},
	{key: "gc_deleted_paths", name: "paths collected (cumulative)", get: func(s soakSample) float64 { return float64(s.GCDeleted) }},
	{key: "fetches", name: "fetches (cumulative)", get: func(s soakSample) float64 { return float64(s.Fetches) }},
}

// soakVerdict compares the first tenth of the samples with the last
// tenth. Flat: the highest value of the last tenth exceeds the highest
// of the first tenth by no more than 10% of it or the figure's slack,
// whichever is larger. Highest rather than mean because several figures
// are a sawtooth (views and processes come and go with the collections
// and the pods): a leak raises the peaks, noise does not.
type soakVerdict struct {
	firstMean, firstMax, lastMean, lastMax, max, limit float64
	flat                                               bool
}

func (f soakFigure) verdict(samples []soakSample) soakVerdict {
	var v soakVerdict
	if len(samples) == 0 {
		return v
	}
	n := max(1, len(samples)/10)
	window := func(ss []soakSample) (mean, top float64) {
		top = f.get(ss[0])
		for _, s := range ss {
			mean += f.get(s)
			top = max(top, f.get(s))
		}
		return mean / float64(len(ss)), top
	}
	v.firstMean, v.firstMax = window(samples[:n])
	v.lastMean, v.lastMax = window(samples[len(samples)-n:])
	_, v.max = window(samples)
	v.limit = v.firstMax + max(f.slack, 0.10*v.firstMax)
	v.flat = v.lastMax <= v.limit
	return v
}

func writeSoakReport(dir string, run *soakRun) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	date := run.started.Format("2006-01-02")
	base := "soak-" + date
	if err := writeSoakCSV(filepath.Join(dir, base+".csv"), run.samples); err != nil {
		return err
	}
	if len(run.samples) > 1 {
		if err := writeSoakPlot(filepath.Join(dir, base+".png"), run); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "soak.md"), []byte(soakMarkdown(run, base)), 0o644)
}

func writeSoakCSV(path string, samples []soakSample) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := csv.NewWriter(f)
	head := []string{"cycle", "elapsed_s"}
	for _, sr := range soakSeries {
		head = append(head, sr.key)
	}
	w.Write(head)
	for _, s := range samples {
		row := []string{strconv.Itoa(s.Cycle), strconv.FormatFloat(s.Elapsed.Seconds(), 'f', 1, 64)}
		for _, sr := range soakSeries {
			row = append(row, strconv.FormatFloat(sr.get(s), 'f', -1, 64))
		}
		w.Write(row)
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return err
	}
	return f.Close()
}

// writeSoakPlot draws one panel per figure, the cycle on the x axis; a
// checked figure's panel shows its flatness limit as a dashed line.
func writeSoakPlot(path string, run *soakRun) error {
	const cols = 4
	rows := (len(soakSeries) + cols - 1) / cols
	plots := make([][]*plot.Plot, rows)
	for i := range plots {
		plots[i] = make([]*plot.Plot, cols)
	}
	for i, sr := range soakSeries {
		p := plot.New()
		title := sr.name
		if sr.checked {
			if sr.verdict(run.samples).flat {
				title += ": flat"
			} else {
				title += ": NOT FLAT"
			}
		}
		p.Title.Text = title
		p.Title.TextStyle.Font.Size = vg.Points(9)
		p.X.Label.Text = "cycle"
		p.Y.Min = 0
		pts := make(plotter.XYs, len(run.samples))
		for j, s := range run.samples {
			pts[j].X, pts[j].Y = float64(s.Cycle), sr.get(s)
		}
		line, err := plotter.NewLine(pts)
		if err != nil {
			return fmt.Errorf("plotting %s: %w", sr.key, err)
		}
		line.Color = color.RGBA{B: 200, A: 255}
		p.Add(line, plotter.NewGrid())
		if sr.checked {
			v := sr.verdict(run.samples)
			limit, err := plotter.NewLine(plotter.XYs{{X: pts[0].X, Y: v.limit}, {X: pts[len(pts)-1].X, Y: v.limit}})
			if err != nil {
				return err
			}
			limit.Color = color.RGBA{R: 200, A: 255}
			limit.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
			p.Add(limit)
		}
		plots[i/cols][i%cols] = p
	}
	img := vgimg.NewWith(vgimg.UseWH(vg.Length(cols)*5*vg.Inch, vg.Length(rows)*3*vg.Inch), vgimg.UseDPI(72))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: 4 * vg.Millimeter, PadY: 4 * vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 4 * vg.Millimeter}
	canvases := plot.Align(plots, tiles, dc)
	for i := range plots {
		for j := range plots[i] {
			if plots[i][j] != nil {
				plots[i][j].Draw(canvases[i][j])
			}
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		return err
	}
	return f.Close()
}

func soakMarkdown(run *soakRun, base string) string {
	var b strings.Builder
	flatCount, checked := 0, 0
	for _, sr := range soakSeries {
		if sr.checked {
			checked++
			if sr.verdict(run.samples).flat {
				flatCount++
			}
		}
	}
	endOK := run.endChecked && len(run.left) == 0
	pass := len(run.failures) == 0 && flatCount == checked && endOK && run.done == run.planned && len(run.samples) > 0
	verdict := "PASS"
	if !pass {
		verdict = "FAIL"
		if len(run.failures) == 0 && flatCount == checked && endOK && run.done < run.planned && len(run.samples) > 0 {
			verdict = "PASS for the cycles run (fewer than planned)"
		}
	}
	fmt.Fprintf(&b, "# Soak: pod create/delete cycles under disk pressure\n\n")
	fmt.Fprintf(&b, "Written by `make soak` (`integration/soak_test.go`, `TestSoak`), %s.\n\n", run.started.Format(time.RFC3339))
	fmt.Fprintf(&b, "**%s**: %d of %d cycles in %v (%.2f s a cycle); %d failures; %d of %d figures flat; end check: %s.\n\n",
		verdict, run.done, run.planned, run.wall.Round(time.Second), meanCycle(run), len(run.failures), flatCount, checked, endCheckText(run))
	fmt.Fprintf(&b, "Each cycle creates a pod on one of %d closures in turn (%s), waits for its container's output, and deletes the pod "+
		"(CRI through crictl, containerd %s, runc, the shim and its `storepkg fetch` built from this tree). "+
		"The store is on a %d MiB tmpfs filled so that with every closure and view in it usage is %d%%; the real `storepkg agent` "+
		"(`--interval %s --gc-min-age %s`, thresholds 85/80%%) collects the closures of deleted pods, which later cycles fetch again. "+
		"A sample is taken every %d cycles, after the cycle's pod is deleted. At the end, the chaos suite's end check "+
		"(docs/reliability.md) runs.\n\n",
		len(run.kinds), strings.Join(run.kinds, ", "), critest.ContainerdVersion, soakStoreSize>>20, soakPeakPercent,
		soakAgentInterval, soakAgentMinAge, soakSampleEvery)
	fmt.Fprintf(&b, "**Flat** means: the highest value of the last 10%% of the samples exceeds the highest of the first 10%% by no more than "+
		"10%% of it, or by the figure's slack, whichever is larger (limit = first max + that). "+
		"Highest rather than mean: views, processes and records come and go with the pods and the collections; a leak raises the peaks.\n\n")
	fmt.Fprintf(&b, "| figure | first 10%%: mean, max | last 10%%: mean, max | max overall | slack | limit | flat |\n|---|---|---|---|---|---|---|\n")
	for _, sr := range soakSeries {
		v := sr.verdict(run.samples)
		flat, slack, limit := "-", "-", "-"
		if sr.checked {
			flat, slack, limit = "yes", fmtNum(sr.slack), fmtNum(v.limit)
			if !v.flat {
				flat = "**no**"
			}
		}
		fmt.Fprintf(&b, "| %s | %s, %s | %s, %s | %s | %s | %s | %s |\n", sr.name, fmtNum(v.firstMean), fmtNum(v.firstMax),
			fmtNum(v.lastMean), fmtNum(v.lastMax), fmtNum(v.max), slack, limit, flat)
	}
	if len(run.agentEnd) > 0 {
		fmt.Fprintf(&b, "\nThe agent's metrics at the end: ")
		var parts []string
		for _, k := range []string{"gc runs (success)", "gc runs (failure)", "paths deleted", "bytes freed", "fetches (success)", "fetches (failure)", "paths substituted", "owner records unreadable"} {
			parts = append(parts, fmt.Sprintf("%s %s", k, fmtNum(run.agentEnd[k])))
		}
		fmt.Fprintf(&b, "%s.\n", strings.Join(parts, ", "))
	}
	if len(run.failures) > 0 {
		fmt.Fprintf(&b, "\nFailures:\n\n")
		for _, f := range run.failures {
			fmt.Fprintf(&b, "- %s\n", strings.ReplaceAll(f, "\n", " "))
		}
	}
	if len(run.left) > 0 {
		fmt.Fprintf(&b, "\nLeft after the end check:\n\n")
		for _, l := range run.left {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	fmt.Fprintf(&b, "\nEvery sample: [%s.csv](%s.csv). The figures over the cycles (dashed: the flatness limit):\n\n![soak figures](%s.png)\n", base, base, base)
	return b.String()
}

func meanCycle(run *soakRun) float64 {
	var sum float64
	var n int
	for i, s := range run.samples {
		k := soakSampleEvery
		if i > 0 {
			k = s.Cycle - run.samples[i-1].Cycle
		}
		sum += s.CycleSeconds * float64(k)
		n += k
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

func endCheckText(run *soakRun) string {
	switch {
	case !run.endChecked:
		return "did not run"
	case len(run.left) == 0:
		return "nothing left"
	default:
		return fmt.Sprintf("%d things left", len(run.left))
	}
}

func fmtNum(v float64) string {
	if v == float64(int64(v)) {
		return strconv.FormatInt(int64(v), 10)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}
