package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/storepkg/storepkg/integration/benchtest"
	"github.com/storepkg/storepkg/integration/critest"
)

// startImage is the benchmark closure as an OCI image in one layout,
// with what the benchmark needs to push, pull and remove it.
type startImage struct {
	benchtest.PodsImage
	ref    string
	layers []*benchtest.Layer
}

// BenchmarkPods: the pod start benchmarks of `make bench` (cold against an
// OCI pull, warm against runc) and the shims' memory, one containerd, the
// same files either way: the benchmark closure (hack/mkbench-closure.sh)
// plus a dynamically linked program whose first output line ends the
// measurement.
//
//   - cold: nothing on the node; storepkg substitutes the closure from a
//     binary cache on 127.0.0.1 (zstd), containerd pulls the same files
//     as an OCI image (zstd layers) from go-containerregistry's registry
//     on 127.0.0.1; crictl runp to first output. Between runs the node
//     store, or the image with its content and snapshots, is removed.
//   - warm: closure or image present; crictl runp to first output.
//   - memory: the shims serving those pods, from /proc.
//
// Run it with -benchtime 1x (hack/bench.sh does); STOREPKG_BENCH_RUNS
// sets the runs per variant.
func BenchmarkPods(b *testing.B) {
	setup(b)
	bc := loadBenchClosure(b)
	fx := fixture.fx
	res := &benchtest.PodsResult{Cold: map[string][]benchtest.PodRun{}, ColdBytes: map[string][]int64{}, Warm: map[string][]benchtest.PodRun{},
		Medians: map[string]float64{}, Load: map[string]string{"start": benchtest.LoadAvg()},
		Variants: map[string]string{}, Phases: map[string]map[string]float64{}}
	closure, err := bc.cache.Closure(bc.root, fx.Hello, fx.Tools)
	if err != nil {
		b.Fatal(err)
	}
	res.Closure.Paths = len(closure)
	res.Closure.NarBytes = bc.cache.NarSize(closure)
	res.Closure.ZstdBytes = bc.cache.FileSize(closure)
	for _, p := range closure {
		u, err := benchtest.TreeUsage(bc.src(p))
		if err != nil {
			b.Fatal(err)
		}
		res.Closure.FileBytes += u.Bytes
		res.Closure.Files += u.Files
	}

	tmp := b.TempDir()
	layers, err := benchtest.NewLayers(filepath.Join(tmp, "layers"))
	if err != nil {
		b.Fatal(err)
	}
	started := time.Now()
	images := startImages(b, bc, closure, layers)
	b.Logf("images built in %v", time.Since(started).Round(time.Millisecond))
	cache := benchtest.ServeCache(b, bc.dirs...)
	reg := benchtest.StartRegistry(b, filepath.Join(tmp, "registry"))
	for i := range images {
		img := &images[i]
		var ls []*benchtest.Layer
		for _, l := range img.layers {
			ls = append(ls, l)
		}
		oci, err := benchtest.Image(ls, v1.Config{
			Env:        []string{"PATH=" + fx.Hello + "/bin:" + fx.Tools + "/bin"},
			WorkingDir: "/",
		}, time.Date(2025, 2, 1, 0, 0, 0, 0, time.UTC))
		if err != nil {
			b.Fatal(err)
		}
		if img.ref, err = reg.Push(context.Background(), "bench/app", img.Label, oci); err != nil {
			b.Fatal(err)
		}
	}
	for _, img := range images {
		res.Images = append(res.Images, img.PodsImage)
	}

	env := critest.Start(b, critest.Options{
		ShimPath: fixture.shim,
		StorepkgOptions: map[string]any{
			"Substituters":      []string{cache.URL},
			"TrustedPublicKeys": []string{fixture.key.Public, bc.key},
		},
		RegistryHosts: map[string]string{reg.Host: reg.URL},
		CrictlTimeout: 5 * time.Minute,
	})

	hello := fx.Hello + "/bin/hello-dyn"
	storepkgSpec := podSpec{
		label:       "storepkg",
		handler:     critest.HandlerStorepkg,
		annotations: paths(bc.root, fx.Hello, fx.Tools),
		image:       critest.PauseImage,
		command:     []string{hello},
	}
	res.Variants["storepkg"] = "storepkg shim, closure from the binary cache (zstd NARs) over HTTP on 127.0.0.1"
	specs := []podSpec{storepkgSpec}
	byLabel := map[string]*startImage{}
	for i := range images {
		img := &images[i]
		byLabel["oci-"+img.Label] = img
		specs = append(specs, podSpec{
			label:   "oci-" + img.Label,
			handler: critest.HandlerRunc,
			image:   img.ref,
			pull:    true,
			command: []string{hello},
		})
		res.Variants["oci-"+img.Label] = fmt.Sprintf("runc shim, image pulled by containerd from the registry on 127.0.0.1: %s", img.Layout)
	}

	runs := benchtest.Runs(5)
	// run starts one pod of spec, waits for its line and removes it.
	run := func(b *testing.B, s podSpec, tag string) (podRun, int64) {
		b.Helper()
		s.command = append(append([]string(nil), s.command...), tag)
		busy := waitIdle()
		cache.Reset()
		reg.Reset()
		r, err := startPod(env, s, tag, "hello from "+tag)
		if err != nil {
			b.Fatalf("%s: %v", tag, err)
		}
		r.Busy = busy
		served := cache.Total(nil).Bytes + reg.Total(nil).Bytes
		removePod(b, env, r.PodID)
		b.Logf("%s: %.0f ms (runp %.0f, pull %.0f, create %.0f, start %.0f, output %.0f), %d bytes served%s",
			tag, r.Total, r.Runp, r.Pull, r.Create, r.Start, r.Output, served, map[bool]string{true: " (machine busy)"}[busy])
		return r, served
	}

	b.Run("cold", func(b *testing.B) {
		wipeStore(b, env)
		for i := 0; i < runs; i++ {
			for k := range specs {
				s := specs[(i+k)%len(specs)]
				snapshots := snapshotCount(env)
				r, served := run(b, s, fmt.Sprintf("cold-%s-%d", s.label, i))
				res.Cold[s.label] = append(res.Cold[s.label], r.PodRun)
				res.ColdBytes[s.label] = append(res.ColdBytes[s.label], served)
				if s.handler == critest.HandlerStorepkg {
					wipeStore(b, env)
				} else {
					removeImage(b, env, s.image, byLabel[s.label].layers, snapshots)
				}
			}
		}
		for label, rs := range res.Cold {
			res.Medians["cold/"+label] = medianTotal(rs)
			res.Phases["cold/"+label] = medianPhases(rs)
			b.ReportMetric(medianTotal(rs), "ms-cold-"+label)
		}
		b.ReportMetric(0, "ns/op")
	})

	warmSpecs := []podSpec{storepkgSpec}
	for _, s := range specs[1:] {
		s.pull = false
		warmSpecs = append(warmSpecs, s)
	}
	b.Run("warm", func(b *testing.B) {
		// Fill the node: the closure into the store, the images into
		// containerd; then one untimed run of each.
		for _, s := range specs {
			run(b, s, "fill-"+s.label)
		}
		for _, s := range warmSpecs {
			run(b, s, "warmup-"+s.label)
		}
		for i := 0; i < runs*2; i++ {
			for k := range warmSpecs {
				s := warmSpecs[(i+k)%len(warmSpecs)]
				r, _ := run(b, s, fmt.Sprintf("warm-%s-%d", s.label, i))
				res.Warm[s.label] = append(res.Warm[s.label], r.PodRun)
			}
		}
		for label, rs := range res.Warm {
			res.Medians["warm/"+label] = medianTotal(rs)
			res.Phases["warm/"+label] = medianPhases(rs)
			b.ReportMetric(medianTotal(rs), "ms-warm-"+label)
		}
		b.ReportMetric(0, "ns/op")
	})

	b.Run("memory", func(b *testing.B) {
		res.Memory = measureShimMemory(b, env, storepkgSpec, warmSpecs[1], images)
		for kind, m := range res.Memory.Median {
			b.ReportMetric(float64(m.RSS)/(1<<20), "MiB-rss-"+kind)
		}
		b.ReportMetric(0, "ns/op")
	})
	res.Load["end"] = benchtest.LoadAvg()
	benchtest.WriteResult(b, "pods", res)
}

func medianTotal(rs []benchtest.PodRun) float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = r.Total
	}
	return benchtest.Median(xs)
}

func medianPhases(rs []benchtest.PodRun) map[string]float64 {
	get := map[string]func(benchtest.PodRun) float64{
		"runp": func(r benchtest.PodRun) float64 { return r.Runp }, "pull": func(r benchtest.PodRun) float64 { return r.Pull },
		"create": func(r benchtest.PodRun) float64 { return r.Create }, "start": func(r benchtest.PodRun) float64 { return r.Start },
		"output": func(r benchtest.PodRun) float64 { return r.Output }, "total": func(r benchtest.PodRun) float64 { return r.Total },
	}
	out := map[string]float64{}
	for name, f := range get {
		xs := make([]float64, len(rs))
		for i, r := range rs {
			xs[i] = f(r)
		}
		out[name] = benchtest.Median(xs)
	}
	return out
}

// startImages lays the closure out as OCI images, zstd layers:
//
//   - dockerfile: three layers as a Dockerfile builds them, FROM a base
//     (libc, gcc libs, ncurses, tzdata, busybox), a RUN installing the
//     language runtimes (python, perl), a COPY of the rest;
//   - layered: one layer per store path, most referenced first, up to 100
//     layers with the rest in the last one, as nixpkgs' dockerTools
//     (buildLayeredImage) and nix2container lay out a closure.
func startImages(b *testing.B, bc *benchClosure, closure []string, ls *benchtest.Layers) []startImage {
	b.Helper()
	baseNames := []string{"glibc", "gcc-12-lib", "ncurses-6.4", "tzdata-2025b", "busybox-1.35.0", "glibc-host", "busybox"}
	var baseRoots []string
	for _, n := range baseNames {
		baseRoots = append(baseRoots, bc.find(b, n))
	}
	base := mustClosure(b, bc, baseRoots...)
	runtime := minus(mustClosure(b, bc, bc.find(b, "python3-3.11.2"), bc.find(b, "perl-5.36.0")), base)
	app := minus(minus(closure, base), runtime)
	date := func(m, d int) time.Time { return time.Date(2025, time.Month(m), d, 12, 0, 0, 0, time.UTC) }
	dockerfile := [][]string{base, runtime, app}
	dates := []time.Time{date(1, 10), date(1, 20), date(2, 1)}

	layered := popularityLayers(b, bc, closure, 100)

	mk := func(label, layout string, groups [][]string, dates []time.Time) startImage {
		img := startImage{PodsImage: benchtest.PodsImage{Label: label, Layout: layout}}
		for i, g := range groups {
			l, err := ls.Layer(bc.storePaths(g), dates[i])
			if err != nil {
				b.Fatal(err)
			}
			img.layers = append(img.layers, l)
			img.Bytes += l.Bytes()
			img.Tar += l.TarBytes
		}
		img.Layers = len(img.layers)
		return img
	}
	nixDates := make([]time.Time, len(layered))
	for i := range nixDates {
		nixDates[i] = benchtest.NixEpoch
	}
	return []startImage{
		mk("dockerfile", "Dockerfile-style: base, runtime (python, perl) and app layers", dockerfile, dates),
		mk("layered", fmt.Sprintf("dockerTools/nix2container-style: %d layers, one per store path, most referenced first", len(layered)), layered, nixDates),
	}
}

func mustClosure(b *testing.B, bc *benchClosure, roots ...string) []string {
	b.Helper()
	c, err := bc.cache.Closure(roots...)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

func minus(a, b []string) []string {
	drop := map[string]bool{}
	for _, x := range b {
		drop[x] = true
	}
	var out []string
	for _, x := range a {
		if !drop[x] {
			out = append(out, x)
		}
	}
	return out
}

// popularityLayers groups the closure as dockerTools' buildLayeredImage
// does: paths by how many paths of the closure depend on them, most
// first, one per layer, the rest together in the last of max layers.
func popularityLayers(b *testing.B, bc *benchClosure, closure []string, max int) [][]string {
	b.Helper()
	pop := map[string]int{}
	for _, p := range closure {
		for _, dep := range mustClosure(b, bc, p) {
			pop[dep]++
		}
	}
	order := append([]string(nil), closure...)
	sort.SliceStable(order, func(i, j int) bool {
		if pop[order[i]] != pop[order[j]] {
			return pop[order[i]] > pop[order[j]]
		}
		return order[i] < order[j]
	})
	var groups [][]string
	for i, p := range order {
		if i < max-1 {
			groups = append(groups, []string{p})
			continue
		}
		if len(groups) < max {
			groups = append(groups, nil)
		}
		groups[max-1] = append(groups[max-1], p)
	}
	return groups
}

// measureShimMemory runs rounds of five pods side by side: a storepkg
// pod whose shim fetches the closure into an empty store, a second one
// with the closure present, a runc pod of the same files from the image,
// and a storepkg pod of a plain image; reads each shim's memory 2 s after they all run (early) and again once
// every shim has passed its first 30 s debug.FreeOSMemory tick (steady:
// what a long-running pod costs).
func measureShimMemory(b *testing.B, env *critest.Env, sp, runc podSpec, images []startImage) *benchtest.MemoryResult {
	b.Helper()
	rounds := 3
	if n := benchtest.Runs(3); n < rounds {
		rounds = n
	}
	const settle = 32 * time.Second
	res := &benchtest.MemoryResult{Median: map[string]benchtest.Mem{}, Early: map[string]benchtest.Mem{},
		Mappings: map[string][]benchtest.Mapping{}, Binaries: map[string]int64{}, SettleS: settle.Seconds()}
	runc.pull = true // a no-op when the warm runs left the image
	plain := podSpec{label: "storepkg-image", handler: critest.HandlerStorepkg, image: critest.BusyboxImage, command: []string{"sh", "-c", "echo hello from $0; exec sleep 3600"}}
	kinds := []struct {
		kind string
		spec podSpec
	}{{"storepkg-cold", sp}, {"storepkg-warm", sp}, {"runc", runc}, {"storepkg-image", plain}}
	for round := 0; round < rounds; round++ {
		wipeStore(b, env)
		pods := map[string]string{}
		pids := map[string]int{}
		var lastStart time.Time
		for _, k := range kinds {
			s := k.spec
			tag := fmt.Sprintf("mem-%s-%d", k.kind, round)
			s.command = append(append([]string(nil), s.command...), tag)
			lastStart = time.Now()
			r, err := startPod(env, s, tag, "hello from "+tag)
			if err != nil {
				b.Fatalf("%s: %v", tag, err)
			}
			pods[k.kind] = r.PodID
			if pids[k.kind], err = env.ShimPID(r.PodID); err != nil {
				b.Fatal(err)
			}
		}
		sample := func() map[string]benchtest.Mem {
			out := map[string]benchtest.Mem{}
			for kind, pid := range pids {
				m, err := benchtest.ReadMem(pid)
				if err != nil {
					b.Fatal(err)
				}
				out[kind] = m
			}
			return out
		}
		time.Sleep(2 * time.Second)
		early := sample()
		time.Sleep(time.Until(lastStart.Add(settle)))
		steady := sample()
		r := map[string]benchtest.MemSample{}
		for kind := range pids {
			r[kind] = benchtest.MemSample{Early: early[kind], Steady: steady[kind]}
			b.Logf("round %d %s (pid %d): early RSS %.1f MiB, steady RSS %.1f MiB (anon %.1f, file+shmem %.1f), Pss %.1f MiB",
				round, kind, pids[kind], mib(early[kind].RSS), mib(steady[kind].RSS), mib(steady[kind].RSSAnon), mib(steady[kind].RSSFile+steady[kind].RSSShmem), mib(steady[kind].PSS))
		}
		res.Rounds = append(res.Rounds, r)
		if round == rounds-1 {
			for kind, pid := range pids {
				maps, err := benchtest.Mappings(pid)
				if err != nil {
					b.Fatal(err)
				}
				if len(maps) > 6 {
					maps = maps[:6]
				}
				res.Mappings[kind] = maps
				if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil {
					if fi, err := os.Stat(exe); err == nil {
						res.Binaries[filepath.Base(exe)] = fi.Size()
					}
				}
			}
		}
		for _, k := range kinds {
			removePod(b, env, pods[k.kind])
		}
	}
	for _, k := range kinds {
		var ms [7][]float64
		var es []float64
		for _, r := range res.Rounds {
			s := r[k.kind].Steady
			for i, v := range []int64{s.RSS, s.RSSAnon, s.RSSFile, s.PSS, s.PSSAnon, s.PSSFile, s.RSSShmem} {
				ms[i] = append(ms[i], float64(v))
			}
			es = append(es, float64(r[k.kind].Early.RSS))
		}
		med := func(i int) int64 { return int64(benchtest.Median(ms[i])) }
		res.Median[k.kind] = benchtest.Mem{RSS: med(0), RSSAnon: med(1), RSSFile: med(2), PSS: med(3), PSSAnon: med(4), PSSFile: med(5), RSSShmem: med(6)}
		res.Early[k.kind] = benchtest.Mem{RSS: int64(benchtest.Median(es))}
	}
	return res
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
