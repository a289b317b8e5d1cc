package integration

import (
	"crypto/ed25519"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/benchtest"
	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/narinfo"
)

// BenchmarkStart, the closure-size scaling benchmark of `make bench`,
// measures crictl create+start of one container in a running pod, warm
// (closure already in the node store, image present), for plain runc and
// for storepkg with synthetic closures of 10 to 3,000 paths. Each op also
// pays two crictl process starts; compare ratios, not absolute numbers.
// The variants are measured in turn, round after round, so a drift of the
// machine hits all alike; STOREPKG_BENCH_RUNS rounds (default 5), medians.
// Run with -benchtime 1x.
func BenchmarkStart(b *testing.B) {
	setup(b)
	_, priv, _ := ed25519.GenerateKey(nil)
	key := narinfo.SecretKey{Name: "bench-1", Key: priv}
	dir := filepath.Join(b.TempDir(), "synthetic")
	w, err := cachetest.NewWriter(dir, key, true)
	if err != nil {
		b.Fatal(err)
	}
	sizes := []int{10, 100, 1000, 3000}
	roots := map[int]string{}
	for _, n := range sizes {
		root, _, err := w.Synthetic(fmt.Sprintf("bench-%d", n), n)
		if err != nil {
			b.Fatal(err)
		}
		roots[n] = root.Absolute()
	}
	url, _, _ := serveCache(b)
	synthetic := nixtest.Serve(b, dir, nil)
	env := critest.Start(b, critest.Options{
		ShimPath: fixture.shim,
		StorepkgOptions: map[string]any{
			"Substituters":      []string{url, synthetic},
			"TrustedPublicKeys": []string{fixture.key.Public, key.Public().String()},
		},
	})

	type variant struct {
		benchtest.StartVariant
		handler     string
		annotations map[string]string
		image       string
		podID       string
		pod         map[string]any
	}
	variants := []*variant{
		{StartVariant: benchtest.StartVariant{Name: "runc"}, handler: critest.HandlerRunc, image: critest.BusyboxImage},
		{StartVariant: benchtest.StartVariant{Name: "storepkg-image"}, handler: critest.HandlerStorepkg, image: critest.BusyboxImage},
	}
	for _, n := range sizes {
		variants = append(variants, &variant{StartVariant: benchtest.StartVariant{Name: fmt.Sprintf("storepkg-paths-%d", n), Paths: n + 2},
			handler: critest.HandlerStorepkg, annotations: paths(roots[n], fixture.fx.Tools), image: critest.PauseImage})
	}
	attempt := 0
	once := func(r *variant) (time.Duration, string) {
		attempt++
		ctr := env.ContainerConfig("app", r.image, []string{"sleep", "3600"})
		ctr["metadata"] = map[string]any{"name": "app", "attempt": attempt}
		start := time.Now()
		id, err := env.CreateContainer(b, r.podID, ctr, r.pod)
		if err != nil {
			b.Fatal(err)
		}
		env.Start(b, id)
		return time.Since(start), id
	}
	for _, r := range variants {
		r.pod = env.PodConfig("bench-"+r.Name, "default", r.annotations)
		r.podID = env.RunPodSandbox(b, r.handler, r.pod)
		// Warm-up: the closure is fetched here, outside the measurement.
		_, id := once(r)
		env.Stop(b, id)
		env.Rm(b, id)
	}
	runs := benchtest.Runs(5)
	for i := 0; i < runs; i++ {
		for k := range variants {
			r := variants[(i+k)%len(variants)]
			if waitIdle() {
				r.Busy++
			}
			d, id := once(r)
			r.Samples = append(r.Samples, ms(d))
			env.Stop(b, id)
			env.Rm(b, id)
		}
	}
	result := benchtest.StartResult{Runs: runs, Load: map[string]string{"end": benchtest.LoadAvg()}}
	for _, r := range variants {
		r.MedianMS = benchtest.Median(r.Samples)
		b.ReportMetric(r.MedianMS, "ms-"+r.Name)
		result.Variants = append(result.Variants, r.StartVariant)
		env.StopPod(b, r.podID)
		env.RmPod(b, r.podID)
	}
	b.ReportMetric(0, "ns/op")
	benchtest.WriteResult(b, "start", result)
}
