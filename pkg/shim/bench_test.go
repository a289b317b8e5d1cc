package shim_test

import (
	"crypto/ed25519"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/internal/critest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/narinfo"
)

// BenchmarkStart measures crictl create+start of one container, warm
// (closure already in the node store, image present), for plain runc and
// for storepkg with closures of growing size. Each op also pays crictl's
// process start; compare ratios, not absolute numbers. Run by `make bench`.
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

	run := func(b *testing.B, handler string, annotations map[string]string, image string) {
		pod := env.PodConfig("bench", "default", annotations)
		podID := env.RunPodSandbox(b, handler, pod)
		defer func() { env.StopPod(b, podID); env.RmPod(b, podID) }()
		ctr := env.ContainerConfig("app", image, []string{"sleep", "3600"})
		once := func(attempt int) string {
			ctr["metadata"] = map[string]any{"name": "app", "attempt": attempt}
			id, err := env.CreateContainer(b, podID, ctr, pod)
			if err != nil {
				b.Fatal(err)
			}
			env.Start(b, id)
			return id
		}
		// Warm-up: the closure is fetched here, outside the measurement.
		id := once(0)
		env.Stop(b, id)
		env.Rm(b, id)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			id := once(i + 1)
			b.StopTimer()
			env.Stop(b, id)
			env.Rm(b, id)
			b.StartTimer()
		}
	}
	b.Run("runc", func(b *testing.B) { run(b, critest.HandlerRunc, nil, critest.BusyboxImage) })
	b.Run("storepkg-image", func(b *testing.B) { run(b, critest.HandlerStorepkg, nil, critest.BusyboxImage) })
	for _, n := range sizes {
		b.Run(fmt.Sprintf("storepkg-paths-%d", n), func(b *testing.B) {
			run(b, critest.HandlerStorepkg, paths(roots[n], fixture.fx.Tools), critest.PauseImage)
		})
	}
}
