package main

import (
	"regexp"
	"strings"
	"testing"
)

// testdata/run holds the JSON files of one full `make bench` run, in the
// formats hack/bench.sh, hack/bench-fetch.sh and integration/benchtest
// write.
const runDir = "testdata/run"

var sections = []string{
	"## Summary",
	"## Cold fetch: storepkg vs Nix's substituter",
	"## Pod start: cold vs an OCI pull, warm vs runc",
	"## Closure-size scaling: warm container create+start",
	"## Store view: its share of a cold pod start",
	"## Sharing: 10 pods on one node",
	"## Shim memory: storepkg's shim vs containerd-shim-runc-v2",
}

// checkText fails on what the report must never say: numbered benchmark
// rows, issue numbers, formatting errors.
func checkText(t *testing.T, out string) {
	t.Helper()
	if m := regexp.MustCompile(`(?i)\b(rows?|issues?)\b[^|]*`).FindString(out); m != "" {
		t.Errorf("report speaks of rows or issues: %q", m)
	}
	if strings.Contains(out, "%!") {
		t.Errorf("formatting error in the report:\n%s", out)
	}
}

// withLargest is fc with its largest NAR taking secs to decode.
func withLargest(fc fetchComp, secs float64) fetchComp {
	fc.Largest = secs
	return fc
}

func loadRun(t *testing.T) *report {
	t.Helper()
	r, err := loadReport(runDir)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestReport(t *testing.T) {
	out := loadRun(t).render()
	checkText(t, out)
	for _, s := range sections {
		if !strings.Contains(out, "\n"+s) {
			t.Errorf("no section %q", s)
		}
	}
	// The fixture's mixed-closure zstd fetch is 0.89/0.45 = 1.98x Nix's
	// default against a 2.0x target, borderline; its pygo closure, with
	// the figures of a measurement from outside, misses four targets;
	// everything else is met.
	if n := strings.Count(out, "**missed**"); n != 6 {
		t.Errorf("%d targets missed, want 6", n)
	}
	if n := strings.Count(out, "**met**"); n != 16 {
		t.Errorf("%d targets met, want 16", n)
	}
	for _, want := range []string{
		"| cold fetch | mixed, zstd: 133 paths, 371.9 MB, vs Nix's default (max-jobs 1) | 0.45 s | Nix 0.89 s | 1.98x faster (borderline) | >= 2.0x Nix | **missed** |",
		"- **Cold fetch, mixed, zstd: 1.98x Nix, target 2.0x (borderline",
		"with this CPU time the ratio cannot exceed 2.09x here", // 0.89 / (0.85 / 2)
		"| cold fetch | mixed, xz: vs Nix --max-jobs auto | 2.05 s | Nix -j 2.54 s | 1.24x faster | >= 1.2x Nix -j | **met** |",
		"| cold fetch | pygo, xz: vs Nix --max-jobs auto | 9.20 s | Nix -j 7.30 s | 1.26x slower | >= 1.2x Nix -j | **missed** |",
		"| cold fetch | pygo, xz: CPU (user+sys) vs Nix --max-jobs auto | 17.30 CPU-s | Nix -j 12.40 CPU-s | 1.40x | at most Nix -j's | **missed** |",
		"| cold fetch | pygo, zstd: CPU (user+sys) vs Nix --max-jobs auto | 2.50 CPU-s | Nix -j 2.50 CPU-s | 1.00x | at most Nix -j's | **met** |",
		"| cold fetch | pygo, xz: vs the decode limit | 9.20 s | limit 5.90 s | 1.56x the limit | within 1.15x of the limit | **missed** |",
		// 7.3 / 1.2 = 6.08 s allowed, 17.3 / 2 = 8.65 s at best.
		"- **Cold fetch, pygo, xz: 0.79x Nix -j, target 1.2x.** Bound by CPU: the target allows 6.08 s, which on 2 cores is 12.17 CPU-s; storepkg used 17.30 CPU-s (user 13.80, sys 3.50), so even with every core busy to the end it takes 8.65 s.",
		"storepkg spends 6.50 CPU-s beyond decoding where Nix spends 1.60. By kind: user +2.30 CPU-s",
		"sys +2.60 CPU-s",
		// 1.67 / 1.2 = 1.39 s allowed, 2.5 / 2 = 1.25 s at best: idle cores.
		"- **Cold fetch, pygo, zstd: 1.17x Nix -j, target 1.2x (borderline: within 3% of the target, run-to-run noise decides).** Not bound by CPU:",
		"(0.36 core-seconds idle).",
		"- **Cold fetch, pygo, zstd vs the decode limit: 2.31x, target 1.15x.**",
		"| pygo | xz | decode limit: 2 `xz -dc` processes over balanced shares | 5.90 | | 10.80 | | | 0.64x |",
		"| pygo | xz | largest NAR alone (98.0 MB compressed), one stream | 5.60 | | | | | |",
		"| pygo | xz | storepkg fetch | 9.20 | 9.00 | 17.30 | 13.80 / 3.50 | 60 |  |",
		"| closure-size scaling | create+start, 3,000-path vs 10-path closure | 88 vs 77 ms |  | +10 ms | within 50 ms | **met** |",
		"In this run storepkg-paths-3000 (3002 paths) takes +10.5 ms over storepkg-paths-10 (12 paths): 3.5 µs per additional path.",
		"(jan: 7 apps, mar: 3 apps)",
		"(perl@1: 1 app; python in 2 builds, python@1: 3 apps, python@2: 1 app)",
		"peak RSS 53 MB on zstd NARs in this run",
		"every shim has passed its first 30 s `debug.FreeOSMemory` tick",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// TestReportMissed: with every target missed, each benchmark has its
// note, and the notes give this run's numbers.
func TestReportMissed(t *testing.T) {
	r := loadRun(t)
	for _, cl := range r.fetch.Closures {
		for _, c := range cl.Compressions {
			*c.Storepkg.Median = *c.Nix.Median // 1.00x Nix, and far from the decode limit
		}
	}
	mixed := r.fetch.Closures[0].Compressions
	*mixed["zstd"].Storepkg.CPU = 2 * 0.89 // on 2 cores, 0.89 s at best: 1.00x
	// Nix -j 0.56 s allows 0.47 s: the largest NAR alone takes longer.
	mixed["zstd"] = withLargest(mixed["zstd"], 0.5)
	p := r.pods
	p.Medians["cold/storepkg"] = 2000
	p.Phases["cold/storepkg"]["start"] = 1800
	p.Medians["warm/storepkg"] = 230
	p.Phases["warm/storepkg"]["start"] = 110
	for i := range r.start.Variants {
		if r.start.Variants[i].Name == "storepkg-paths-3000" {
			r.start.Variants[i].MedianMS = 377.3 // +300 ms over 10 paths
		}
	}
	r.sharing.Storepkg.Pass = false
	r.sharing.Storepkg.Why = "glibc fetched 2 times"
	steady := p.Memory.Median["storepkg-cold"]
	steady.RSS *= 2
	steady.RSSAnon += steady.RSS / 2
	p.Memory.Median["storepkg-cold"] = steady

	r.fetch.Busy = 4
	out := r.render()
	checkText(t, out)
	if !strings.Contains(out, "(4 measurements of this run started on a busy machine: part of that idle time may be other work's)") {
		t.Error("a note on idle cores does not say that the machine was busy")
	}
	// Every cold fetch target but two CPU ones, left as they were (mixed
	// xz 3.90 CPU-s against Nix -j's 4.75, pygo zstd 2.50 against 2.50),
	// is missed: 14; and one of each other benchmark.
	if n := strings.Count(out, "**missed**"); n != 14+5 {
		t.Errorf("%d targets missed, want 19", n)
	}
	for _, want := range []string{
		"- **Cold fetch, mixed, xz: 1.00x Nix, target 1.5x.** Not bound by CPU alone:",
		"- **Cold fetch, mixed, xz vs the decode limit: 2.41x, target 1.15x.**",
		"- **Cold fetch, mixed, zstd: 1.00x Nix, target 2.0x.** Bound by CPU: storepkg used 1.78 CPU-s",
		"below 15% of the decoding work instead of 183%",
		"- **Cold fetch, mixed, zstd: 0.63x Nix -j, target 1.2x.** Bound by the largest NAR: the target allows 0.47 s, and the largest NAR alone takes 0.50 s",
		"- **Cold fetch, mixed, zstd: CPU 1.96x Nix -j's, target at most 1x.**",
		"- **Cold pod start: 2000 ms against 1383 ms for oci-dockerfile.** By phase (medians, storepkg minus oci-dockerfile): runp +32 ms, pull -1210 ms, create +28 ms, start +1739 ms.",
		"- **Warm pod start: +55 ms over runc, target +18 ms.** By phase (medians, storepkg minus runc): runp +18 ms, start +50 ms. What those phases include: `runp` includes the pod's prefetch",
		"- **Closure-size scaling: 3,000 paths take +300 ms over 10 paths, target 50 ms.** In this run storepkg-paths-3000 (3002 paths) takes +300.0 ms over storepkg-paths-10 (12 paths): 100.3 µs per additional path.",
		"- **Sharing.** storepkg: glibc fetched 2 times.",
		"- **Shim memory: 2.09x the runc shim, target 1.2x.**",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// TestReportPartial: a run of some benchmarks has only their sections.
func TestReportPartial(t *testing.T) {
	r := loadRun(t)
	r.env.Benchmarks = "start"
	r.fetch, r.pods, r.sharing, r.view = nil, nil, nil, nil
	out := r.render()
	checkText(t, out)
	if !strings.Contains(out, "Benchmarks run: start (of fetch pods start sharing view peers).") {
		t.Error("a partial run does not say which benchmarks ran")
	}
	for _, s := range sections {
		want := s == "## Summary" || strings.HasPrefix(s, "## Closure-size")
		if got := strings.Contains(out, "\n"+s); got != want {
			t.Errorf("section %q present: %v, want %v", s, got, want)
		}
	}
	if r, err := loadReport(t.TempDir()); err != nil || r.render() == "" {
		t.Errorf("an empty results directory: %v", err)
	}
}

// TestReportPeers: the peer sharing section, one summary line per node
// count judged on the copies of the closure upstream served, and for a
// missed one the note says where the extra copies came from.
func TestReportPeers(t *testing.T) {
	r := &report{}
	if err := load("testdata/peers/peers.json", &r.peers); err != nil {
		t.Fatal(err)
	}
	out := r.render()
	checkText(t, out)
	for _, want := range []string{
		"\n## Peer sharing: one closure rolled out to N nodes at once",
		"| peer sharing | 10 nodes: upstream bytes of a rollout with peers | 15.0 MB (1.00 copies), every node in 1.3 s | alone 149.9 MB (10.00 copies), every node in 3.2 s | 10.0x fewer bytes, 2.41x faster | <= 1.1 copies of the closure | **met** |",
		"| peer sharing | 100 nodes: upstream bytes of a rollout with peers | 30.0 MB (2.00 copies), every node in 20.5 s | alone 1499.2 MB (100.00 copies), every node in 31.0 s | 50.0x fewer bytes, 1.51x faster | <= 1.1 copies of the closure | **missed** |",
		"| 100 | peers | 20.5 s | 15.2 s | 3.1 s | 30.0 MB | 2.00 | 0.64 | 2.0 MB | 12 of 30 (3) | 4500.0 MB | 7 | 0 | 100 of 100 |",
		"| 10 | upstream alone | 3.2 s | 3.2 s | 3.0 s | 149.9 MB | 10.00 | 3.21 | 0.2 MB | 30 of 30 (10) |  |  | 0 | not checked |",
		"- **Peer sharing, 100 nodes: 2.00 copies upstream, target 1.1.** The upstream served 12 of the 30 NARs more than once (one as many as 3 times)",
		"the fetches counted 7 peer failures",
		"stopped there: N=300 needs about 50000 MB",
		"3.1x smaller than the NARs here, so against the NAR size 3 full copies would pass",
		"their bytes grow with N, 20.0 kB per node here (30 narinfos)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if n := strings.Count(out, "**missed**"); n != 1 {
		t.Errorf("%d targets missed, want 1", n)
	}
	// A node store Nix finds bad misses the target whatever the bytes.
	*r.peers.Rows[2].Verified = 99
	r.peers.Rows[2].Copies = 1
	r.summary, r.notes, r.details = nil, nil, nil
	out = r.render()
	if !strings.Contains(out, "Nix found 1 of the 100 node stores bad") || strings.Count(out, "**missed**") != 1 {
		t.Errorf("a bad node store is not a missed target:\n%s", out)
	}
}
