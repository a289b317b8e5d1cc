// Command benchreport turns the measurements of `make bench` (JSON files
// written by hack/bench-fetch.sh and the benchmarks in integration/) into
// bench/results/latest.md: the machine, the versions, one summary table
// with every target judged met or missed, a section per benchmark, and
// for each missed target what this run's numbers say about why and what
// would close it. Every figure in the text comes from the JSON files; the
// prose around them says what a figure measures.
//
// Usage (in integration/): go run ./cmd/benchreport -in DIR [-o FILE]
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/storepkg/storepkg/integration/benchtest"
)

type envInfo struct {
	Date       string            `json:"date"`
	Cores      int               `json:"cores"`
	CPU        string            `json:"cpu"`
	MemGiB     string            `json:"mem_gib"`
	Kernel     string            `json:"kernel"`
	LoadBefore string            `json:"load_before"`
	LoadAfter  string            `json:"load_after"`
	LoadMax    string            `json:"load_max"`
	Versions   map[string]string `json:"versions"`
	FS         string            `json:"fs"`
	Runs       int               `json:"runs"`
	DurationS  int               `json:"duration_s"`
	Benchmarks string            `json:"rows"` // which benchmarks ran, as hack/bench.sh names them
	Dirty      string            `json:"dirty"`
	Raw        string            `json:"raw"`
}

type fetchTool struct {
	Median *float64 `json:"median_s"`
	Best   *float64 `json:"best_s"`
	RSS    *float64 `json:"peak_rss_mb"`
	CPU    *float64 `json:"cpu_s"` // user+sys
	User   *float64 `json:"user_s"`
	Sys    *float64 `json:"sys_s"`
}

type fetchComp struct {
	CompressedBytes int64     `json:"compressed_bytes"`
	Nix             fetchTool `json:"nix"`
	NixPar          fetchTool `json:"nix_par"`
	Storepkg        fetchTool `json:"storepkg"`
	Limit           float64   `json:"limit_s"`
	LimitCPU        float64   `json:"limit_cpu_s"`
	LimitProcs      int       `json:"limit_procs"` // decoder processes, one per core
	Largest         float64   `json:"largest_nar_s"`
	LargestBytes    int64     `json:"largest_nar_bytes"` // compressed
}

// fetchClosure is one benchmark closure's results.
type fetchClosure struct {
	Name         string               `json:"name"`
	Script       string               `json:"script"`
	Paths        int                  `json:"closure_paths"`
	NarBytes     int64                `json:"nar_bytes"`
	Files        string               `json:"files"`
	Compressions map[string]fetchComp `json:"compressions"`
}

type fetchResult struct {
	Runs     int            `json:"runs"`
	RootsFS  string         `json:"roots_fs"`
	Busy     int            `json:"busy_runs"`
	Closures []fetchClosure `json:"closures"`
}

func main() {
	in := flag.String("in", "", "directory with the JSON results")
	out := flag.String("o", "", "write the report here (also printed)")
	flag.Parse()
	if *in == "" {
		fmt.Fprintln(os.Stderr, "usage: benchreport -in DIR [-o FILE]")
		os.Exit(2)
	}
	r, err := loadReport(*in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
	text := r.render()
	fmt.Print(text)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(text), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "benchreport:", err)
			os.Exit(1)
		}
	}
}

// loadReport reads the results in dir: env.json (hack/bench.sh),
// fetch.json (hack/bench-fetch.sh), pods.json, start.json, sharing.json
// and view.json (integration/benchtest's result types), peers.json
// (hack/bench-peers.sh).
func loadReport(dir string) (*report, error) {
	r := &report{}
	for name, v := range map[string]any{"env": &r.env, "fetch": &r.fetch, "pods": &r.pods, "start": &r.start, "sharing": &r.sharing, "view": &r.view, "peers": &r.peers} {
		if err := load(filepath.Join(dir, name+".json"), v); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// load decodes path into *v (a pointer to a pointer), leaving it nil when
// the file is absent (a benchmark that was not run).
func load(path string, v any) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

type report struct {
	env     *envInfo
	fetch   *fetchResult
	pods    *benchtest.PodsResult
	start   *benchtest.StartResult
	sharing *benchtest.SharingResult
	view    *benchtest.ViewResult
	peers   *peersResult

	summary []string // lines of the summary table
	notes   []string // why missed, what would close it
	details []string // sections
}

// The benchmarks, as the summary table and the notes name them.
const (
	benchFetch   = "cold fetch"
	benchCold    = "cold pod start"
	benchWarm    = "warm pod start"
	benchScaling = "closure-size scaling"
	benchSharing = "sharing"
	benchMemory  = "shim memory"
	benchView    = "store view"
	benchPeers   = "peer sharing"
)

// allBenchmarks is what a full hack/bench.sh run measures.
const allBenchmarks = "fetch pods start sharing view peers"

// judge adds a line to the summary table: one target of benchmark bench.
func (r *report) judge(bench, what, storepkg, peer, ratio, target string, met bool) {
	verdict := "**met**"
	if !met {
		verdict = "**missed**"
	}
	r.summary = append(r.summary, fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s |", bench, what, storepkg, peer, ratio, target, verdict))
}

func (r *report) note(title, text string) {
	r.notes = append(r.notes, fmt.Sprintf("- **%s.** %s", title, text))
}

func (r *report) render() string {
	r.fetchSection()
	r.podSection()
	r.scalingSection()
	r.viewSection()
	r.sharingSection()
	r.memorySection()
	r.peersSection()

	var b strings.Builder
	e := r.env
	if e == nil {
		e = &envInfo{}
	}
	fmt.Fprintf(&b, "# storepkg benchmarks: `make bench`\n\n")
	fmt.Fprintf(&b, "Measured %s on %d cores (%s), %s GiB RAM, Linux %s. `make bench` took %s.\n\n",
		e.Date, e.Cores, e.CPU, e.MemGiB, e.Kernel, duration(e.DurationS))
	if e.Benchmarks != "" && e.Benchmarks != allBenchmarks {
		fmt.Fprintf(&b, "Benchmarks run: %s (of %s).\n\n", e.Benchmarks, allBenchmarks)
	}
	fmt.Fprintf(&b, "Load average (1, 5, 15 min): %s before, %s after; highest 1-min load seen during the run: %s (the benchmark's own work included). "+
		"Other work shares this machine: every peer is measured in the same run, interleaved with storepkg, "+
		"medians of several runs, and each measurement waits (up to a bound) for a quiet CPU.\n\n",
		e.LoadBefore, e.LoadAfter, e.LoadMax)
	v := e.Versions
	fmt.Fprintf(&b, "Versions: storepkg %s, containerd %s, runc %s, crictl %s, Nix %s, %s.\n\n",
		v["storepkg"], v["containerd"], v["runc"], v["crictl"], v["nix"], v["go"])
	if e.Dirty != "" {
		fmt.Fprintf(&b, "The working tree differed from that commit while measuring (files: %s).\n\n", e.Dirty)
	}
	fmt.Fprintf(&b, "Node store, containerd's root and state, the caches and the registry's blobs live on a %s. Runs per variant: %d.\n\n", e.FS, e.Runs)
	fmt.Fprintf(&b, "## Summary\n\n| benchmark | what | storepkg | peer | ratio | target | |\n|---|---|---:|---:|---:|---|---|\n")
	for _, s := range r.summary {
		b.WriteString(s + "\n")
	}
	if len(r.notes) > 0 {
		fmt.Fprintf(&b, "\n## Missed targets: why, and what would close them\n\n")
		for _, n := range r.notes {
			b.WriteString(n + "\n")
		}
	}
	for _, d := range r.details {
		b.WriteString("\n" + d)
	}
	fmt.Fprintf(&b, "\n---\nReproduce: `make bench` (hack/bench.sh; knobs: RUNS, IDLE_WAIT, BENCH_FS=disk, BENCHMARKS). Raw numbers of this run (JSON, go test log): %s on the machine that ran it.\n", e.Raw)
	return b.String()
}

func (r *report) cores() int {
	if r.env != nil && r.env.Cores > 0 {
		return r.env.Cores
	}
	return 2
}

// borderline marks a ratio within 3% of its target, where run-to-run
// noise on this machine decides the verdict.
func borderline(got, target float64) string {
	if math.Abs(got/target-1) < 0.03 {
		return " (borderline: within 3% of the target, run-to-run noise decides)"
	}
	return ""
}

func duration(s int) string {
	if s <= 0 {
		return "?"
	}
	return fmt.Sprintf("%dm%02ds", s/60, s%60)
}

func f(p *float64) float64 {
	if p == nil {
		return math.NaN()
	}
	return *p
}

func mb(n int64) string  { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
func kb(n int64) string  { return fmt.Sprintf("%.1f kB", float64(n)/1e3) }
func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// ---- cold fetch: storepkg fetch vs Nix's substituter (hack/bench-fetch.sh)

// The cold fetch's targets, every closure and compression, on wall times
// (medians) unless said otherwise.
var fetchNixTargets = map[string]float64{"xz": 1.5, "zstd": 2.0} // Nix's default / storepkg

const (
	fetchParTarget   = 1.2  // Nix --max-jobs auto / storepkg
	fetchLimitTarget = 1.15 // storepkg / the decode limit
	// and storepkg's CPU time (user+sys) at most Nix --max-jobs auto's
)

// cpuText is "4.98 CPU-s (user 3.10, sys 1.88)", without the split when
// the run did not record it.
func cpuText(t fetchTool) string {
	if t.User == nil || t.Sys == nil {
		return fmt.Sprintf("%.2f CPU-s", f(t.CPU))
	}
	return fmt.Sprintf("%.2f CPU-s (user %.2f, sys %.2f)", f(t.CPU), *t.User, *t.Sys)
}

// faster says how a peer's time compares with storepkg's: ratio is the
// peer's over storepkg's.
func faster(ratio float64) string {
	if ratio < 1 {
		return fmt.Sprintf("%.2fx slower", 1/ratio)
	}
	return fmt.Sprintf("%.2fx faster", ratio)
}

// fetchClosure is the closure named name, or the first one.
func (r *report) fetchClosure(name string) *fetchClosure {
	if r.fetch == nil || len(r.fetch.Closures) == 0 {
		return nil
	}
	for i := range r.fetch.Closures {
		if r.fetch.Closures[i].Name == name {
			return &r.fetch.Closures[i]
		}
	}
	return &r.fetch.Closures[0]
}

func (r *report) fetchSection() {
	fr := r.fetch
	if fr == nil || len(fr.Closures) == 0 {
		return
	}
	cores := r.cores()
	var d strings.Builder
	fmt.Fprintf(&d, "## Cold fetch: storepkg vs Nix's substituter\n\n")
	fmt.Fprintf(&d, "Each closure from a local `file://` binary cache (written by `nix copy`) into an empty store on %s; %d runs per tool, "+
		"interleaved, medians (hack/bench-fetch.sh). CPU is user+sys time of the process and its children.", fr.RootsFS, fr.Runs)
	if fr.Busy > 0 {
		fmt.Fprintf(&d, " %d measurements started on a busy machine.", fr.Busy)
	}
	fmt.Fprintf(&d, " The decode limit is decoding alone on every core: the compressed NARs dealt into one share per core of about "+
		"equal size (largest first, each to the smallest share), one `xz -dc` or `zstd -dc` process per share reading its NARs in sequence "+
		"to /dev/null, all shares at once; its time is when the last share is done, its CPU that of all. A fetch that decodes each NAR "+
		"in one stream can do no better, nor better than the largest NAR alone.\n\n")
	for _, cl := range fr.Closures {
		files := cl.Files
		if _, rest, ok := strings.Cut(files, " in "); ok {
			files = rest // "370056953 in 7561 files (...)": the bytes are the NAR size's
		}
		fmt.Fprintf(&d, "- **%s**: %d store paths, %s as NARs (%s; files of Debian packages staged by %s).\n", cl.Name, cl.Paths, mb(cl.NarBytes), files, cl.Script)
	}
	fmt.Fprintf(&d, "\n| closure | compression | tool | median s | best s | CPU s | user / sys s | peak RSS MB | median vs storepkg |\n|---|---|---|---:|---:|---:|---:|---:|---:|\n")
	for _, cl := range fr.Closures {
		for _, c := range sortedKeys(cl.Compressions) {
			fc := cl.Compressions[c]
			sp := f(fc.Storepkg.Median)
			for _, t := range []struct {
				name string
				ft   fetchTool
			}{{"Nix `nix-store -r` (default: max-jobs 1)", fc.Nix}, {"Nix `nix-store -r --max-jobs auto`", fc.NixPar}, {"storepkg fetch", fc.Storepkg}} {
				if t.ft.Median == nil {
					continue
				}
				ratio, split := "", ""
				if t.name != "storepkg fetch" {
					ratio = fmt.Sprintf("%.2fx", *t.ft.Median/sp)
				}
				if t.ft.User != nil && t.ft.Sys != nil {
					split = fmt.Sprintf("%.2f / %.2f", *t.ft.User, *t.ft.Sys)
				}
				fmt.Fprintf(&d, "| %s | %s | %s | %.2f | %.2f | %.2f | %s | %.0f | %s |\n", cl.Name, c, t.name, *t.ft.Median, f(t.ft.Best), f(t.ft.CPU), split, f(t.ft.RSS), ratio)
			}
			procs := fc.LimitProcs
			if procs == 0 {
				procs = cores
			}
			fmt.Fprintf(&d, "| %s | %s | decode limit: %d `%s -dc` processes over balanced shares | %.2f | | %.2f | | | %.2fx |\n", cl.Name, c, procs, c, fc.Limit, fc.LimitCPU, fc.Limit/sp)
			largest := "largest NAR alone, one stream"
			if fc.LargestBytes > 0 {
				largest = fmt.Sprintf("largest NAR alone (%s compressed), one stream", mb(fc.LargestBytes))
			}
			fmt.Fprintf(&d, "| %s | %s | %s | %.2f | | | | | |\n", cl.Name, c, largest, fc.Largest)
		}
	}
	for _, cl := range fr.Closures {
		for _, c := range sortedKeys(cl.Compressions) {
			r.fetchTargets(cl, c, cores)
		}
	}
	r.details = append(r.details, d.String())
}

// fetchTargets judges one closure and compression against the cold
// fetch's targets and, for each missed one, says from this run's figures
// why and what would close it.
func (r *report) fetchTargets(cl fetchClosure, c string, cores int) {
	fc := cl.Compressions[c]
	sp := f(fc.Storepkg.Median)
	cpu := f(fc.Storepkg.CPU)
	cpuFloor := cpu / float64(cores) // every core busy from start to end
	util := cpu / sp
	idle := float64(cores)*sp - cpu
	extra := cpu/fc.LimitCPU - 1
	label := fmt.Sprintf("%s, %s", cl.Name, c)
	xzNote := ""
	if c == "xz" {
		xzNote = " For xz, storepkg pipes each NAR through the host's xz(1) when there is one (pkg/fetch): a process per NAR and one more " +
			"copy of every decompressed byte, through a pipe; decoding in-process through liblzma (cgo) would save both, at the price of a static binary."
	}
	largest := fmt.Sprintf("the largest NAR alone takes %.2f s to decode in one stream", fc.Largest)
	// Idle time measured on a busy machine is partly other work's.
	busy := ""
	if r.fetch.Busy > 0 {
		busy = fmt.Sprintf(" (%d measurements of this run started on a busy machine: part of that idle time may be other work's)", r.fetch.Busy)
	}

	// Nix's default configuration.
	nix := f(fc.Nix.Median)
	target := fetchNixTargets[c]
	ratio := nix / sp
	met := ratio >= target
	mark := ""
	if borderline(ratio, target) != "" {
		mark = " (borderline)"
	}
	r.judge(benchFetch, fmt.Sprintf("%s: %d paths, %s, vs Nix's default (max-jobs 1)", label, cl.Paths, mb(cl.NarBytes)), fmt.Sprintf("%.2f s", sp),
		fmt.Sprintf("Nix %.2f s", nix), faster(ratio)+mark, fmt.Sprintf(">= %.1fx Nix", target), met)
	if !met {
		ceiling := nix / cpuFloor
		why := fmt.Sprintf("storepkg used %.2f CPU-s (user+sys) and kept %.2f of the %d cores busy on average; with every core busy "+
			"to the end it would take %.2f s, and Nix's default took %.2f s, so with this CPU time the ratio cannot exceed %.2fx here",
			cpu, util, cores, cpuFloor, nix, ceiling)
		closeIt := "more cores (substitution decodes the largest NARs first, one per core), or less CPU per byte outside decoding."
		if ceiling < target {
			why = "Bound by CPU: " + why + ". "
		} else {
			why = "Not bound by CPU alone: " + why + ", above the target: what is missing is the time a core sat idle" + busy + ". "
			closeIt = "keeping every core busy to the end of the fetch, then " + closeIt
		}
		r.note(fmt.Sprintf("Cold fetch, %s: %.2fx Nix, target %.1fx%s", label, ratio, target, borderline(ratio, target)), why+fmt.Sprintf(
			"Decompression alone is %.2f CPU-s (`%s -dc` of the same NARs); storepkg needs %.0f%% more for what substituting "+
				"requires besides: SHA-256 of every NAR byte (the signed NarHash), parsing the NARs "+
				"and writing %s of NARs as files through the kernel. What would close it: %s%s",
			fc.LimitCPU, c, 100*extra, mb(cl.NarBytes), closeIt, xzNote))
	}

	// Nix as NixOS configures it: --max-jobs auto, wall time and CPU.
	if fc.NixPar.Median != nil {
		par := *fc.NixPar.Median
		ratio := par / sp
		met := ratio >= fetchParTarget
		mark := ""
		if borderline(ratio, fetchParTarget) != "" {
			mark = " (borderline)"
		}
		r.judge(benchFetch, fmt.Sprintf("%s: vs Nix --max-jobs auto", label), fmt.Sprintf("%.2f s", sp),
			fmt.Sprintf("Nix -j %.2f s", par), faster(ratio)+mark, fmt.Sprintf(">= %.1fx Nix -j", fetchParTarget), met)
		if !met {
			need := par / fetchParTarget
			var why string
			switch {
			case fc.Largest > need:
				why = fmt.Sprintf("Bound by the largest NAR: the target allows %.2f s, and %s (%s compressed), so no fetch that decodes a NAR "+
					"in one stream meets it here. What would close it: a cache whose large NARs are made of independently decodable blocks "+
					"(xz with parallel-compression, zstd in several frames), decoded on several cores at once.", need, largest, mb(fc.LargestBytes))
			case cpuFloor > need:
				why = fmt.Sprintf("Bound by CPU: the target allows %.2f s, which on %d cores is %.2f CPU-s; storepkg used %s, so even with "+
					"every core busy to the end it takes %.2f s. What would close it: %.0f%% less CPU (see the CPU target below).",
					need, cores, need*float64(cores), cpuText(fc.Storepkg), cpuFloor, 100*(1-need*float64(cores)/cpu))
			default:
				why = fmt.Sprintf("Not bound by CPU: the target allows %.2f s; with every core busy to the end storepkg's %s would take "+
					"%.2f s, and %s, but it kept %.2f of the %d cores busy on average (%.2f core-seconds idle%s). What would close it: every "+
					"core busy to the end of the fetch: the largest NARs started first, no core waiting on another's NAR or on the store's database.",
					need, cpuText(fc.Storepkg), cpuFloor, largest, util, cores, idle, busy)
			}
			r.note(fmt.Sprintf("Cold fetch, %s: %.2fx Nix -j, target %.1fx%s", label, ratio, fetchParTarget, borderline(ratio, fetchParTarget)), why)
		}
	}
	if fc.NixPar.CPU != nil {
		parCPU := *fc.NixPar.CPU
		ratio := cpu / parCPU
		met := ratio <= 1
		r.judge(benchFetch, fmt.Sprintf("%s: CPU (user+sys) vs Nix --max-jobs auto", label), fmt.Sprintf("%.2f CPU-s", cpu),
			fmt.Sprintf("Nix -j %.2f CPU-s", parCPU), fmt.Sprintf("%.2fx", ratio), "at most Nix -j's", met)
		if !met {
			split := ""
			if fc.Storepkg.User != nil && fc.Storepkg.Sys != nil && fc.NixPar.User != nil && fc.NixPar.Sys != nil {
				split = fmt.Sprintf(" By kind: user %+.2f CPU-s (decoding, SHA-256 of every NAR byte for the signed NarHash, NAR parsing, copies), "+
					"sys %+.2f CPU-s (syscalls: reading the cache, creating and writing the closure's files, pipes).",
					*fc.Storepkg.User-*fc.NixPar.User, *fc.Storepkg.Sys-*fc.NixPar.Sys)
			}
			r.note(fmt.Sprintf("Cold fetch, %s: CPU %.2fx Nix -j's, target at most 1x", label, ratio), fmt.Sprintf(
				"storepkg used %s, Nix -j %s. Decoding alone (the decode limit's processes) is %.2f CPU-s, so storepkg spends %.2f CPU-s "+
					"beyond decoding where Nix spends %.2f.%s What would close it: %.2f CPU-s less beyond decoding, found by profiling `storepkg fetch` "+
					"on this closure (pprof, and perf for the kernel's share): fewer copies of each byte between decoder, hash and file, "+
					"fewer syscalls per file.%s",
				cpuText(fc.Storepkg), cpuText(fc.NixPar), fc.LimitCPU, cpu-fc.LimitCPU, parCPU-fc.LimitCPU, split, cpu-parCPU, xzNote))
		}
	}

	// The decode limit.
	lim := sp / fc.Limit
	metLim := lim <= fetchLimitTarget
	r.judge(benchFetch, fmt.Sprintf("%s: vs the decode limit", label), fmt.Sprintf("%.2f s", sp),
		fmt.Sprintf("limit %.2f s", fc.Limit), fmt.Sprintf("%.2fx the limit", lim), fmt.Sprintf("within %.2fx of the limit", fetchLimitTarget), metLim)
	if !metLim {
		floorLim := math.Max(1, cpuFloor/fc.Limit)
		r.note(fmt.Sprintf("Cold fetch, %s vs the decode limit: %.2fx, target %.2fx", label, lim, fetchLimitTarget), fmt.Sprintf(
			"The limit is decoding alone: %.2f CPU-s, %.2f s on %d cores (%s). storepkg decodes the same NARs and also verifies "+
				"and writes the closure: %.2f CPU-s, %.0f%% more, which on %d cores puts its floor at %.2fx the limit; it kept %.2f cores busy "+
				"on average, hence %.2fx measured. What would close it: work outside decoding (SHA-256, NAR parsing, file creation) "+
				"below %.0f%% of the decoding work instead of %.0f%%, and every core busy to the end.%s",
			fc.LimitCPU, fc.Limit, cores, largest, cpu, 100*extra, cores, floorLim, util, lim, 100*(fetchLimitTarget-1), 100*extra, xzNote))
	}
}

// ---- pod start: cold vs an OCI pull, warm vs runc (BenchmarkPods)

// podPhases are the steps of a pod start, in order, as PodRun and the
// phase medians name them.
var podPhases = []string{"runp", "pull", "create", "start", "output"}

// phaseDiffs lists the phases where storepkg's median differs from the
// peer's by at least 2 ms: "start +574 ms, pull -1210 ms".
func phaseDiffs(sp, peer map[string]float64) string {
	var parts []string
	for _, ph := range podPhases {
		if delta := sp[ph] - peer[ph]; math.Abs(delta) >= 2 {
			parts = append(parts, fmt.Sprintf("%s %+.0f ms", ph, delta))
		}
	}
	if len(parts) == 0 {
		return "none by 2 ms or more"
	}
	return strings.Join(parts, ", ")
}

// fastestOCI is the OCI variant of kind ("cold" or "warm") with the lowest
// median total.
func fastestOCI(p *benchtest.PodsResult, kind string, runs map[string][]benchtest.PodRun) (float64, string) {
	best, bestLabel := math.Inf(1), ""
	for _, label := range sortedKeys(runs) {
		if strings.HasPrefix(label, "oci-") && p.Medians[kind+"/"+label] < best {
			best, bestLabel = p.Medians[kind+"/"+label], label
		}
	}
	return best, bestLabel
}

func (r *report) podSection() {
	p := r.pods
	if p == nil {
		return
	}
	var d strings.Builder
	fmt.Fprintf(&d, "## Pod start: cold vs an OCI pull, warm vs runc (crictl runp to the first output line)\n\n")
	fmt.Fprintf(&d, "The same files both ways: the cold-fetch closure plus a dynamically linked program (its libc and library in store paths), %d store paths, "+
		"%d files, %s (zstd: %s). The container runs the program; the measurement ends when its first line lands in the CRI log file (inotify). "+
		"storepkg pods name the paths in `storepkg.dev/paths` and run on the placeholder (pause) image; OCI pods are pulled by containerd's CRI "+
		"(`crictl pull`, as kubelet does after runp) from go-containerregistry's registry on 127.0.0.1 over HTTP, layers zstd-compressed "+
		"(the same compression class as the zstd binary cache). Both with their defaults: containerd fetches 3 layers at a time and "+
		"unpacks them into overlayfs snapshots; the storepkg shim starts substituting at runp, up to %d NARs at a time on %d cores.\n\n",
		p.Closure.Paths, p.Closure.Files, mb(p.Closure.FileBytes), mb(p.Closure.ZstdBytes), min(max(2*r.cores(), 4), 16), r.cores())
	fmt.Fprintf(&d, "| image | layout | layers | compressed | tar |\n|---|---|---:|---:|---:|\n")
	for _, im := range p.Images {
		fmt.Fprintf(&d, "| oci-%s | %s | %d | %s | %s |\n", im.Label, im.Layout, im.Layers, mb(im.Bytes), mb(im.Tar))
	}
	phaseTable := func(kind string, runs map[string][]benchtest.PodRun) {
		fmt.Fprintf(&d, "\n| %s | runp | pull | create | start | to output | **total (median)** | runs | bytes served |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n", kind)
		for _, label := range sortedKeys(runs) {
			ph := p.Phases[kind+"/"+label]
			served := ""
			if kind == "cold" && len(p.ColdBytes[label]) > 0 {
				served = mb(p.ColdBytes[label][0])
			}
			busy := 0
			for _, x := range runs[label] {
				if x.Busy {
					busy++
				}
			}
			n := fmt.Sprint(len(runs[label]))
			if busy > 0 {
				n += fmt.Sprintf(" (%d busy)", busy)
			}
			fmt.Fprintf(&d, "| %s | %.0f | %.0f | %.0f | %.0f | %.0f | **%.0f ms** | %s | %s |\n", label,
				ph["runp"], ph["pull"], ph["create"], ph["start"], ph["output"], ph["total"], n, served)
		}
	}
	if len(p.Cold) > 0 {
		fmt.Fprintf(&d, "\nCold: nothing on the node. Between runs the storepkg node store (paths and database) is deleted, and the image is removed "+
			"through CRI with containerd's garbage collector deleting its content and snapshots (checked). Phase medians in ms, each phase's median on its own; "+
			"storepkg's `start` includes the wait for the closure, whose substitution the shim began at runp:\n")
		phaseTable("cold", p.Cold)
		sp := p.Medians["cold/storepkg"]
		best, bestLabel := fastestOCI(p, "cold", p.Cold)
		met := sp < best
		r.judge(benchCold, fmt.Sprintf("%d paths / %s, vs an OCI pull", p.Closure.Paths, mb(p.Closure.FileBytes)), fmt.Sprintf("%.0f ms", sp),
			fmt.Sprintf("%s %.0f ms", bestLabel, best), fmt.Sprintf("%.2fx the time", sp/best), "faster than the OCI pull", met)
		if !met {
			r.note(fmt.Sprintf("Cold pod start: %.0f ms against %.0f ms for %s", sp, best, bestLabel), fmt.Sprintf(
				"By phase (medians, storepkg minus %s): %s. storepkg's `start` is mostly the wait for its closure's substitution "+
					"(compare the cold fetch section), the OCI pod's `pull` is containerd pulling and unpacking the image.",
				bestLabel, phaseDiffs(p.Phases["cold/storepkg"], p.Phases["cold/"+bestLabel])))
		}
	}
	if len(p.Warm) > 0 {
		fmt.Fprintf(&d, "\nWarm: the closure is in the node store, the images are in containerd (no pull). Phase medians in ms:\n")
		phaseTable("warm", p.Warm)
		sp := p.Medians["warm/storepkg"]
		best, bestLabel := fastestOCI(p, "warm", p.Warm)
		diff := sp - best
		allowed := math.Max(5, 0.10*best)
		met := diff <= allowed
		r.judge(benchWarm, "closure / image present, vs runc", fmt.Sprintf("%.0f ms", sp), fmt.Sprintf("runc (%s) %.0f ms", bestLabel, best),
			fmt.Sprintf("%+.0f ms (%.2fx)", diff, sp/best), fmt.Sprintf("within 10%% or 5 ms (<= +%.0f ms)", allowed), met)
		if !met {
			sp, oc := p.Phases["warm/storepkg"], p.Phases["warm/"+bestLabel]
			r.note(fmt.Sprintf("Warm pod start: %+.0f ms over runc, target +%.0f ms", diff, allowed), fmt.Sprintf(
				"By phase (medians, storepkg minus runc): %s. %s", phaseDiffs(sp, oc), warmWhy(sp, oc)))
		}
	}
	r.details = append(r.details, d.String())
}

// warmWhy says what the storepkg shim does in the phases where its warm
// start takes 5 ms or more longer than runc's: what those phases include.
func warmWhy(sp, oc map[string]float64) string {
	var why []string
	if sp["runp"]-oc["runp"] >= 5 {
		why = append(why, "`runp` includes the pod's prefetch, which the storepkg shim starts at the sandbox's create: a `storepkg fetch` "+
			"child (pkg/fetchexec) that opens the node store's database and checks that the closure is valid, then the check of the closure's "+
			"store view against the store (pkg/store/views); both run beside runc creating the sandbox, on the same cores")
	}
	if sp["start"]-oc["start"] >= 5 {
		why = append(why, "`start` includes the shim's task create: it waits for that fetch child, checks that the closure's store view still "+
			"matches the store (one statx per path) and registers the container as its user, writes the container's generated root and its spec "+
			"with the view's read-only bind at /nix/store (pkg/mount), and then runc runs; runc's shim mounts the image's overlay snapshot instead")
	}
	if len(why) == 0 {
		return "No phase of storepkg's is 5 ms or more slower than runc's; the difference is spread over the phases."
	}
	return "What those phases include: " + strings.Join(why, "; ") + ". What would close it: profiling those steps in the shim " +
		"and moving what can be done once per closure out of the start path."
}

// ---- closure-size scaling: warm container create+start (BenchmarkStart)

func (r *report) scalingSection() {
	s := r.start
	if s == nil {
		return
	}
	var d strings.Builder
	fmt.Fprintf(&d, "## Closure-size scaling: warm container create+start\n\n")
	fmt.Fprintf(&d, "crictl create + start of one container in a running pod (each op pays two crictl process starts), closure already in the node store, "+
		"image present; synthetic closures (Go-written signed cache) of the sizes below plus the tools path; variants measured in turn, %d rounds, medians. "+
		"The shim shows a closure through its store view (pkg/store/views: hard links into the store, one directory per closure, shared by the "+
		"closure's containers), mounted at /nix/store with one read-only bind whatever the closure's size, plus one for each path of more than 256 entries (pkg/mount); these synthetic paths have two. The per-path work "+
		"of a warm create is the check that the view still matches the store: the view's manifest read and one statx per path. Where the views "+
		"directory cannot hard-link into the store, the shim mounts each path instead (its log says \"no shared store view\").\n\n", s.Runs)
	fmt.Fprintf(&d, "| variant | paths | median ms | vs runc | vs 10 paths |\n|---|---:|---:|---:|---:|\n")
	ms := map[string]float64{}
	paths := map[string]int{}
	for _, v := range s.Variants {
		ms[v.Name] = v.MedianMS
		paths[v.Name] = v.Paths
	}
	for _, v := range s.Variants {
		vs10 := ""
		if strings.HasPrefix(v.Name, "storepkg-paths-") {
			vs10 = fmt.Sprintf("%+.0f ms", v.MedianMS-ms["storepkg-paths-10"])
		}
		n := ""
		if v.Paths > 0 {
			n = fmt.Sprint(v.Paths)
		}
		fmt.Fprintf(&d, "| %s | %s | %.1f | %.2fx | %s |\n", v.Name, n, v.MedianMS, v.MedianMS/ms["runc"], vs10)
	}
	small, large := "storepkg-paths-10", "storepkg-paths-3000"
	a, okA := ms[large]
	b, okB := ms[small]
	if okA && okB {
		diff := a - b
		met := diff <= 50
		perPath := ""
		if more := paths[large] - paths[small]; more > 0 {
			perPath = fmt.Sprintf("%s (%d paths) takes %+.1f ms over %s (%d paths): %.1f µs per additional path",
				large, paths[large], diff, small, paths[small], 1000*diff/float64(more))
			fmt.Fprintf(&d, "\nIn this run %s.\n", perPath)
		}
		r.judge(benchScaling, "create+start, 3,000-path vs 10-path closure", fmt.Sprintf("%.0f vs %.0f ms", a, b), "",
			fmt.Sprintf("%+.0f ms", diff), "within 50 ms", met)
		if !met {
			r.note(fmt.Sprintf("Closure-size scaling: 3,000 paths take %+.0f ms over 10 paths, target 50 ms", diff), fmt.Sprintf(
				"In this run %s. With a store view the container's store is one bind mount whatever the closure's size, and the per-path work is one "+
					"statx of each path (about a microsecond) against the view's manifest; a cost per path far above that points at the shim mounting each path "+
					"(no store view: the views directory cannot hard-link into the store, see the shim's log), which runc performs in the "+
					"container's mount namespace. What would close it: a node store on which views can be built, or profiling the shim's "+
					"create at 3,000 paths.", perPath))
		}
	}
	r.details = append(r.details, d.String())
}

// ---- the store view's share of a cold pod start (BenchmarkViewCost)

func (r *report) viewSection() {
	v := r.view
	if v == nil {
		return
	}
	var d strings.Builder
	fmt.Fprintf(&d, "## Store view: its share of a cold pod start, %d files\n\n", v.Files)
	fmt.Fprintf(&d, "crictl runp to the first output line of a pod on a synthetic closure of %d paths and %d files (one path of 80,000) plus the "+
		"fixture's program, closure already in the node store; the closure's store view removed before each cold start, kept for the warm ones; "+
		"%d rounds, medians. The view's build time is the shim's own (its log). The view links the files of paths of up to 256 entries "+
		"and leaves the larger ones to one read-only bind each in the container, so its build does not grow with their files; "+
		"this build linked %d files and left %d paths to bind.\n\n", v.Paths, v.Files, v.Runs, v.Linked, v.Bound)
	fmt.Fprintf(&d, "| cold pod start | warm pod start | view build | view's share of the cold start |\n|---:|---:|---:|---:|\n")
	fmt.Fprintf(&d, "| %.0f ms | %.0f ms | %.1f ms | %.1f%% |\n", v.ColdMS, v.WarmMS, v.MedianMS, 100*v.Share)
	met := v.Share < 0.10
	r.judge(benchView, fmt.Sprintf("view build, share of a cold pod start (%d files)", v.Files), fmt.Sprintf("%.1f ms of %.0f ms", v.MedianMS, v.ColdMS), "",
		fmt.Sprintf("%.1f%%", 100*v.Share), "under 10%", met)
	if !met {
		r.note(fmt.Sprintf("Store view: %.1f%% of a cold pod start", 100*v.Share), fmt.Sprintf(
			"The view linked %d files in %.1f ms (%.1f µs a file) and left %d paths to bind. Its cost is the links of the paths of up to "+
				"256 entries (views.BindEntries); a lower bound links less and binds more paths per container start (~130 µs a mount in runc).",
			v.Linked, v.MedianMS, 1000*v.MedianMS/math.Max(1, float64(v.Linked)), v.Bound))
	}
	r.details = append(r.details, d.String())
}

// ---- sharing: ten pods on one node (BenchmarkSharing)

func (r *report) sharingSection() {
	s := r.sharing
	if s == nil {
		return
	}
	n := len(s.Apps)
	var d strings.Builder
	fmt.Fprintf(&d, "## Sharing: %d pods on one node\n\n", n)
	var with []string
	for _, k := range sortedKeys(s.ClosuresWith) {
		with = append(with, fmt.Sprintf("%s in %d", k, s.ClosuresWith[k]))
	}
	fmt.Fprintf(&d, "%d workloads whose closures overlap as real software does (%s of the %d closures), each with its own app path "+
		"(real Go sources) on top. %d store paths in the union, %s of files; %d paths (%s) are in two or more closures; the %d closures "+
		"add up to %s. All %d pods start at once on an empty node.\n\n",
		n, strings.Join(with, ", "), n, s.Union.Paths, mb(s.Union.FileBytes), s.Shared.Paths, mb(s.Shared.FileBytes), n, mb(s.SumOfClosures.FileBytes), n)
	bases := appsBy(s.Apps, func(a benchtest.SharingAppResult) string { return a.Base })
	fmt.Fprintf(&d, "The OCI images hold exactly the same files, layered as Dockerfiles make them: `FROM` a base image, the same packages "+
		"in %d %s (%s); for some apps `FROM` a runtime image (%s); `RUN` installing what else the app needs (the installs column: "+
		"a package that needs a runtime brings it into that layer), and `COPY` of the app. Layers with the same content and build are one blob, "+
		"shared as a registry shares them; layers built separately differ in their files' dates, as real builds do. zstd layers, zstd NARs.\n\n",
		len(bases), plural(len(bases), "build", "builds"), strings.Join(bases, ", "), runtimeBuilds(s.Apps))
	fmt.Fprintf(&d, "| app | base | FROM runtime | installs | closure paths | closure files | image layers (label digest compressed bytes) |\n|---|---|---|---|---:|---:|---|\n")
	for _, a := range s.Apps {
		fmt.Fprintf(&d, "| %s | %s | %s | %s | %d | %s | %s |\n", a.Name, a.Base, a.Runtime, strings.Join(a.Extras, ", "), a.Paths, mb(a.FileBytes), strings.Join(a.Layers, "; "))
	}
	fmt.Fprintf(&d, "\n| | transferred (server count) | payload GETs | on the node | node detail | shared paths kept more than once | all %d running | every shared path once |\n|---|---:|---:|---:|---|---:|---:|---|\n", n)
	side := func(name string, x benchtest.SharingSide) {
		var det []string
		for _, k := range sortedKeys(x.DiskDetail) {
			det = append(det, fmt.Sprintf("%s %s", k, mb(x.DiskDetail[k])))
		}
		verdict := "PASS"
		if !x.Pass {
			verdict = "MISS: " + x.Why
		}
		fmt.Fprintf(&d, "| %s | %s | %d | %s | %s | %d (max %d copies, %s extra) | %.1f s | %s |\n", name, mb(x.ServedBytes), x.Requests, mb(x.DiskBytes),
			strings.Join(det, ", "), x.SharedStoredTwice, x.MaxCopies, mb(x.ExtraCopyBytes), x.AllRunningMS/1000, verdict)
	}
	side("storepkg", s.Storepkg)
	side("OCI (containerd, overlayfs)", s.OCI)
	fmt.Fprintf(&d, "| ideal (union once) | %s (zstd) | %d | %s (files) | | 0 | | |\n", mb(s.Union.ZstdBytes), s.Union.Paths, mb(s.Union.FileBytes))
	if len(s.OCI.MostCopies) > 0 {
		var mc []string
		for _, m := range s.OCI.MostCopies {
			var name string
			var copies int
			var extra int64
			fmt.Sscanf(m, "%s %d %d", &name, &copies, &extra)
			mc = append(mc, fmt.Sprintf("%s %d copies (+%s)", name, copies, mb(extra)))
		}
		fmt.Fprintf(&d, "\nMost copied on the OCI node (unpacked copies, extra bytes): %s.\n", strings.Join(mc, ", "))
	}
	fmt.Fprintf(&d, "\nTransferred: bytes the binary cache's or the registry's HTTP server wrote (NARs and narinfos; blobs and manifests). "+
		"On the node: regular-file bytes added under the storepkg store root (one walk, so the store views' hard links into the store count once) and "+
		"containerd's root (content store keeps the compressed layers, the snapshotter the unpacked files).\n")
	r.judge(benchSharing, fmt.Sprintf("%d pods: transferred / on disk", n), fmt.Sprintf("%s / %s", mb(s.Storepkg.ServedBytes), mb(s.Storepkg.DiskBytes)),
		fmt.Sprintf("OCI %s / %s", mb(s.OCI.ServedBytes), mb(s.OCI.DiskBytes)),
		fmt.Sprintf("%.2fx / %.2fx less", float64(s.OCI.ServedBytes)/float64(s.Storepkg.ServedBytes), float64(s.OCI.DiskBytes)/float64(s.Storepkg.DiskBytes)),
		"every shared path stored and transferred once", s.Storepkg.Pass)
	if !s.Storepkg.Pass {
		r.note("Sharing", "storepkg: "+s.Storepkg.Why+".")
	}
	r.details = append(r.details, d.String())
}

// appsBy counts the apps by key, leaving out those whose key is empty:
// ["jan: 7 apps", "mar: 3 apps"].
func appsBy(apps []benchtest.SharingAppResult, key func(benchtest.SharingAppResult) string) []string {
	count := map[string]int{}
	for _, a := range apps {
		if k := key(a); k != "" {
			count[k]++
		}
	}
	var out []string
	for _, k := range sortedKeys(count) {
		out = append(out, fmt.Sprintf("%s: %d %s", k, count[k], plural(count[k], "app", "apps")))
	}
	return out
}

// runtimeBuilds describes the runtime images the apps are FROM, named
// runtime@build: "perl@1: 1 app; python in 2 builds, python@1: 3 apps,
// python@2: 1 app".
func runtimeBuilds(apps []benchtest.SharingAppResult) string {
	byRuntime := map[string][]benchtest.SharingAppResult{}
	for _, a := range apps {
		if a.Runtime == "" {
			continue
		}
		name, _, _ := strings.Cut(a.Runtime, "@")
		byRuntime[name] = append(byRuntime[name], a)
	}
	if len(byRuntime) == 0 {
		return "none here"
	}
	var out []string
	for _, name := range sortedKeys(byRuntime) {
		builds := appsBy(byRuntime[name], func(a benchtest.SharingAppResult) string { return a.Runtime })
		if len(builds) > 1 {
			out = append(out, fmt.Sprintf("%s in %d builds, %s", name, len(builds), strings.Join(builds, ", ")))
		} else {
			out = append(out, builds[0])
		}
	}
	return strings.Join(out, "; ")
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// ---- shim memory: storepkg's shim vs containerd-shim-runc-v2 (BenchmarkPods)

func (r *report) memorySection() {
	if r.pods == nil || r.pods.Memory == nil {
		return
	}
	m := r.pods.Memory
	var d strings.Builder
	fmt.Fprintf(&d, "## Shim memory: storepkg's shim vs containerd-shim-runc-v2\n\n")
	child := "the `storepkg fetch` of the cold fetch section"
	if cl := r.fetchClosure("mixed"); cl != nil {
		if z, ok := cl.Compressions["zstd"]; ok && z.Storepkg.RSS != nil {
			child += fmt.Sprintf(" (peak RSS %.0f MB on zstd NARs in this run)", *z.Storepkg.RSS)
		}
	}
	// containerd's shim library returns freed memory to the kernel every
	// 30 s (debug.FreeOSMemory), in both shims.
	settled := " (before the shims' first 30 s `debug.FreeOSMemory` tick)"
	if m.SettleS > 30 {
		settled = " (every shim has passed its first 30 s `debug.FreeOSMemory` tick)"
	}
	fmt.Fprintf(&d, "Each round runs four pods side by side: a storepkg pod whose shim fetched the pod-start closure into an empty store (storepkg-cold), "+
		"a second storepkg pod on the same closure (storepkg-warm), a runc pod of the same files from the Dockerfile-style image (runc), and a storepkg pod "+
		"of a plain image (storepkg-image: no store path, no fetch). The shim substitutes closures in a `storepkg fetch` child that exits once the closure "+
		"is valid (pkg/fetchexec): the fetcher, the decoders and the store's database are never in the per-pod process; the child is %s, "+
		"alive for the seconds of the fetch only. All shims are static builds (CGO_ENABLED=0), as install-deps builds "+
		"containerd-shim-runc-v2 and the installer image ships storepkg's. The shim of each pod is found as the parent of the sandbox process "+
		"(PID from `init.pid` in containerd's state dir). Memory from /proc/PID/status and smaps_rollup, %d %s, medians, read %.0f s after the "+
		"last pod started%s; early = 2 s after all run.\n\n", child, len(m.Rounds), plural(len(m.Rounds), "round", "rounds"), m.SettleS, settled)
	fmt.Fprintf(&d, "| shim | VmRSS | anon (heap, stacks, runtime) | binary and other files | Pss | early VmRSS | vs runc (VmRSS) |\n|---|---:|---:|---:|---:|---:|---:|\n")
	runc := m.Median["runc"]
	for _, k := range []string{"runc", "storepkg-warm", "storepkg-cold", "storepkg-image"} {
		x, ok := m.Median[k]
		if !ok {
			continue
		}
		fmt.Fprintf(&d, "| %s | %s | %s | %s | %s | %s | %.2fx |\n", k, mib(x.RSS), mib(x.RSSAnon), mib(x.RSS-x.RSSAnon), mib(x.PSS), mib(m.Early[k].RSS), float64(x.RSS)/float64(runc.RSS))
	}
	fmt.Fprintf(&d, "\nThe storepkg shims run the same binary, so their Pss splits its pages among them; VmRSS is the comparable figure. "+
		"A binary on a tmpfs counts as RssShmem rather than RssFile: \"binary and other files\" is VmRSS minus RssAnon.\n")
	var bs []string
	for _, k := range sortedKeys(m.Binaries) {
		bs = append(bs, fmt.Sprintf("%s %s", k, mb(m.Binaries[k])))
	}
	if len(bs) > 0 {
		fmt.Fprintf(&d, "\nBinaries: %s.\n", strings.Join(bs, ", "))
	}
	if len(m.Mappings) > 0 {
		fmt.Fprintf(&d, "\nLargest resident mappings (last round, steady):\n\n| shim | mappings (RSS) |\n|---|---|\n")
		for _, k := range sortedKeys(m.Mappings) {
			var ms []string
			for _, x := range m.Mappings[k] {
				ms = append(ms, fmt.Sprintf("%s %s", filepath.Base(x.Name), mib(x.RSS)))
			}
			fmt.Fprintf(&d, "| %s | %s |\n", k, strings.Join(ms, ", "))
		}
	}
	worst, worstKind := int64(0), ""
	for _, k := range []string{"storepkg-warm", "storepkg-cold"} {
		if x, ok := m.Median[k]; ok && x.RSS > worst {
			worst, worstKind = x.RSS, k
		}
	}
	ratio := float64(worst) / float64(runc.RSS)
	met := ratio <= 1.2
	r.judge(benchMemory, "VmRSS, steady, vs containerd-shim-runc-v2", fmt.Sprintf("%s (%s); warm %s", mib(worst), worstKind, mib(m.Median["storepkg-warm"].RSS)),
		fmt.Sprintf("runc shim %s", mib(runc.RSS)), fmt.Sprintf("%.2fx", ratio), "within 20% of the runc shim", met)
	if !met {
		w, c := m.Median["storepkg-warm"], m.Median["storepkg-cold"]
		binaries := ""
		if len(bs) > 0 {
			binaries = " (binaries: " + strings.Join(bs, ", ") + ")"
		}
		r.note(fmt.Sprintf("Shim memory: %.2fx the runc shim, target 1.2x", ratio), fmt.Sprintf(
			"What the storepkg shim holds beyond runc's, by kind: binary and other file pages %s warm, %s cold vs %s for runc%s; "+
				"anon memory (heap, stacks, Go runtime) %s warm and %s after fetching vs %s. File pages grow with what the binary links "+
				"(`go version -m`, `go list -deps ./cmd/containerd-shim-storepkg-v1`), anon memory with what stays on the heap, "+
				"which the cold shim's figure against the warm one's shows for a fetch.",
			mib(w.RSS-w.RSSAnon), mib(c.RSS-c.RSSAnon), mib(runc.RSS-runc.RSSAnon), binaries, mib(w.RSSAnon), mib(c.RSSAnon), mib(runc.RSSAnon)))
	}
	r.details = append(r.details, d.String())
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ---- peer sharing: one closure rolled out to N nodes (hack/bench-peers.sh)

type peersClosure struct {
	Root            string `json:"root"`
	Paths           int    `json:"paths"`
	NarBytes        int64  `json:"nar_bytes"`
	CompressedBytes int64  `json:"compressed_bytes"`
	Compression     string `json:"compression"`
}

// peersRow is one rollout: N nodes, with peers or from upstream alone.
type peersRow struct {
	Nodes            int     `json:"nodes"`
	Mode             string  `json:"mode"` // "peers" or "upstream"
	UpstreamNarBytes int64   `json:"upstream_nar_bytes"`
	NarinfoBytes     int64   `json:"upstream_narinfo_bytes"`
	Copies           float64 `json:"copies"`    // upstream NAR bytes / the closure's compressed NARs
	NarRatio         float64 `json:"nar_ratio"` // upstream NAR bytes / the closure's NAR size
	NarsServed       int     `json:"nars_served"`
	NarsServedMax    int     `json:"nars_served_max"`
	NarsServedTwice  int     `json:"nars_served_twice"`
	AllS             float64 `json:"all_s"`
	MedianS          float64 `json:"median_s"`
	FirstS           float64 `json:"first_s"`
	PeerBytes        *int64  `json:"peer_bytes"`
	PeerFailures     *int    `json:"peer_failures"`
	HashRefusals     *int    `json:"hash_refusals"`
	Failed           int     `json:"failed"`
	Verified         *int    `json:"verified"` // nodes whose store Nix verified; nil: not checked
}

type peersResult struct {
	Closure      peersClosure `json:"closure"`
	Rate         string       `json:"rate"`
	NodesAsked   string       `json:"nodes_asked"`
	Stopped      string       `json:"stopped"`
	TargetCopies float64      `json:"target_copies"`
	Rows         []peersRow   `json:"rows"`
}

// rolloutText is "12.3 MB (0.82 copies), every node in 4.1 s".
func rolloutText(row peersRow) string {
	return fmt.Sprintf("%s (%.2f copies), every node in %.1f s", mb(row.UpstreamNarBytes), row.Copies, row.AllS)
}

func (r *report) peersSection() {
	p := r.peers
	if p == nil || len(p.Rows) == 0 {
		return
	}
	c := p.Closure
	var d strings.Builder
	fmt.Fprintf(&d, "## Peer sharing: one closure rolled out to N nodes at once\n\n")
	fmt.Fprintf(&d, "N simulated nodes on this machine, each a store root of its own on a tmpfs and a real `storepkg agent` serving it to the others "+
		"on 127.0.0.1 (a peers file listing all N, one token), and one upstream binary cache on 127.0.0.1 behind one bandwidth limit "+
		"of %s/s shared by every connection, which counts the bytes it serves (integration/cmd/ratecache). The closure: `%s`, %d paths, "+
		"%s of NARs, %s as %s NARs in the cache (signed; part of the mixed benchmark closure). A rollout starts one `storepkg fetch` per node, "+
		"all at once, and ends when the last exits; with peers each gets `--peers`, from upstream alone neither agents nor `--peers`, "+
		"the same N in the same run (hack/bench-peers.sh).\n\n",
		p.Rate, c.Root, c.Paths, mb(c.NarBytes), mb(c.CompressedBytes), c.Compression)
	fmt.Fprintf(&d, "Upstream NAR bytes are the NAR bodies the upstream served; copies are those bytes over the "+
		"closure's compressed NARs, what one node fetching alone downloads. The target is judged on copies, not on the NAR size: "+
		"the cache serves compressed NARs, %.1fx smaller than the NARs here, so against the NAR size %.0f full copies would pass. "+
		"Narinfos are apart: every node reads each path's narinfo from upstream, peers or not (a peer is never trusted for one: "+
		"the signed narinfo is what a peer's NAR is checked against), so their bytes grow with N, %s per node here (%d narinfos), "+
		"and matter only where NARs are as small as narinfos.\n\n",
		float64(c.NarBytes)/float64(c.CompressedBytes), math.Floor(1.1*float64(c.NarBytes)/float64(c.CompressedBytes)),
		kb(p.Rows[0].NarinfoBytes/int64(max(p.Rows[0].Nodes, 1))), c.Paths)
	fmt.Fprintf(&d, "| nodes | from | every node has it | median node | first node | upstream NAR bytes | copies | x NAR size | upstream narinfo bytes | NARs served twice or more (most) | from peers | peer failures | failed fetches | verified by Nix |\n"+
		"|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	byN := map[int]map[string]peersRow{}
	var ns []int
	for _, row := range p.Rows {
		if byN[row.Nodes] == nil {
			byN[row.Nodes] = map[string]peersRow{}
			ns = append(ns, row.Nodes)
		}
		byN[row.Nodes][row.Mode] = row
		from := "peers"
		if row.Mode != "peers" {
			from = "upstream alone"
		}
		peerBytes, failures := "", ""
		if row.PeerBytes != nil && row.Mode == "peers" {
			peerBytes = mb(*row.PeerBytes)
		}
		if row.PeerFailures != nil && row.Mode == "peers" {
			failures = fmt.Sprint(*row.PeerFailures)
		}
		verified := "not checked"
		if row.Verified != nil {
			verified = fmt.Sprintf("%d of %d", *row.Verified, row.Nodes)
		}
		fmt.Fprintf(&d, "| %d | %s | %.1f s | %.1f s | %.1f s | %s | %.2f | %.2f | %s | %d of %d (%d) | %s | %s | %d | %s |\n",
			row.Nodes, from, row.AllS, row.MedianS, row.FirstS, mb(row.UpstreamNarBytes), row.Copies, row.NarRatio, mb(row.NarinfoBytes),
			row.NarsServedTwice, row.NarsServed, row.NarsServedMax, peerBytes, failures, row.Failed, verified)
	}
	sort.Ints(ns)
	if p.Stopped != "" {
		fmt.Fprintf(&d, "\nNode counts asked for: %s; stopped there: %s.\n", p.NodesAsked, p.Stopped)
	}
	for _, n := range ns {
		withPeers, ok := byN[n]["peers"]
		if !ok {
			continue
		}
		alone, hasAlone := byN[n]["upstream"]
		aloneText, ratio := "", ""
		if hasAlone {
			aloneText = "alone " + rolloutText(alone)
			ratio = fmt.Sprintf("%.1fx fewer bytes, %s", float64(alone.UpstreamNarBytes)/float64(max(withPeers.UpstreamNarBytes, 1)), faster(alone.AllS/withPeers.AllS))
		}
		bad := withPeers.Failed > 0 || (withPeers.Verified != nil && *withPeers.Verified != n)
		met := withPeers.Copies <= p.TargetCopies && !bad
		r.judge(benchPeers, fmt.Sprintf("%d nodes: upstream bytes of a rollout with peers", n), rolloutText(withPeers), aloneText, ratio,
			fmt.Sprintf("<= %.1f copies of the closure", p.TargetCopies), met)
		if !met {
			r.note(fmt.Sprintf("Peer sharing, %d nodes: %.2f copies upstream, target %.1f", n, withPeers.Copies, p.TargetCopies), peersWhy(withPeers))
		}
	}
	r.details = append(r.details, d.String())
}

// peersWhy says, from a rollout's figures, where the extra upstream
// bytes came from.
func peersWhy(row peersRow) string {
	var why []string
	if row.Failed > 0 {
		why = append(why, fmt.Sprintf("%d of the %d fetches failed (their logs are kept under the closure's logs/peers)", row.Failed, row.Nodes))
	}
	if row.Verified != nil && *row.Verified != row.Nodes {
		why = append(why, fmt.Sprintf("Nix found %d of the %d node stores bad", row.Nodes-*row.Verified, row.Nodes))
	}
	if row.NarsServedTwice > 0 {
		why = append(why, fmt.Sprintf("the upstream served %d of the %d NARs more than once (one as many as %d times): more than one node downloaded "+
			"those paths upstream, which happens when a claim at the path's owner fails or times out (2 s), when a waiter gives up on its holder "+
			"(a wait round or a stall) or when a peer's NAR is refused", row.NarsServedTwice, row.NarsServed, row.NarsServedMax))
	}
	if row.PeerFailures != nil && *row.PeerFailures > 0 {
		why = append(why, fmt.Sprintf("the fetches counted %d peer failures, each sending a path upstream", *row.PeerFailures))
	}
	if len(why) == 0 {
		why = append(why, "no NAR was served twice and no fetch failed: the extra bytes are NARs cut off and requested again")
	}
	text := strings.Join(why, "; ") + "."
	return strings.ToUpper(text[:1]) + text[1:]
}
