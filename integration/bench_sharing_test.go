package integration

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/storepkg/storepkg/integration/benchtest"
	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// sharingApp is one of the ten workloads of BenchmarkSharing, with its
// own code: a store path of real Go sources.
type sharingApp struct {
	benchtest.SharingApp
	gosrc []string // GOROOT/src dirs: the app's code
}

// The base image every app starts from (a Debian-slim-like set), built
// twice, and the runtime images apps are FROM, each a build of one
// runtime on the January base.
var (
	sharingBase     = []string{"glibc", "gcc-12-lib", "ncurses-6.4", "tzdata-2025b", "busybox-1.35.0"}
	sharingBaseDate = map[string]time.Time{
		"jan": time.Date(2025, 1, 10, 0, 0, 0, 0, time.UTC),
		"mar": time.Date(2025, 3, 3, 0, 0, 0, 0, time.UTC),
	}
	sharingRuntimes = map[string]struct {
		name string
		date time.Time
	}{
		"python@1": {"python3-3.11.2", time.Date(2025, 1, 20, 0, 0, 0, 0, time.UTC)},
		"python@2": {"python3-3.11.2", time.Date(2025, 2, 10, 0, 0, 0, 0, time.UTC)}, // same python, rebuilt
		"perl@1":   {"perl-5.36.0", time.Date(2025, 1, 22, 0, 0, 0, 0, time.UTC)},
	}
	sharingApps = []sharingApp{
		{SharingApp: benchtest.SharingApp{Name: "shop-api", Base: "jan", Runtime: "python@1", Extras: []string{"libssl-3", "libsqlite3-0.8.6"}}, gosrc: []string{"net/http"}},
		{SharingApp: benchtest.SharingApp{Name: "auth-api", Base: "jan", Runtime: "python@1", Extras: []string{"libssl-3"}}, gosrc: []string{"crypto/tls", "crypto/x509"}},
		{SharingApp: benchtest.SharingApp{Name: "etl-worker", Base: "jan", Runtime: "python@2", Extras: []string{"libyaml-0-2.0.9"}}, gosrc: []string{"encoding"}},
		{SharingApp: benchtest.SharingApp{Name: "report-cron", Base: "jan", Runtime: "perl@1", Extras: []string{"glibc-locales"}}, gosrc: []string{"text"}},
		{SharingApp: benchtest.SharingApp{Name: "git-mirror", Base: "jan", Extras: []string{"git-2.39.5", "libcurl-nss-4.8.0"}}, gosrc: []string{"archive"}},
		{SharingApp: benchtest.SharingApp{Name: "notebook", Base: "jan", Runtime: "python@1", Extras: []string{"perl-5.36.0"}}, gosrc: []string{"go/ast", "go/parser", "go/printer"}},
		{SharingApp: benchtest.SharingApp{Name: "query-jit", Base: "jan", Extras: []string{"llvm-15-lib"}}, gosrc: []string{"database"}},
		{SharingApp: benchtest.SharingApp{Name: "i18n-svc", Base: "mar", Extras: []string{"icu4c-72.1", "libssl-3"}}, gosrc: []string{"html", "unicode"}},
		{SharingApp: benchtest.SharingApp{Name: "ops-shell", Base: "mar", Extras: []string{"vim-9.0"}}, gosrc: []string{"os"}},
		{SharingApp: benchtest.SharingApp{Name: "static-site", Base: "mar"}, gosrc: []string{"image"}},
	}
)

// BenchmarkSharing: the sharing benchmark of `make bench`. Ten pods whose
// closures overlap as real software does (one libc, libssl, python and
// perl shared by several apps, app-specific top paths) start on an empty
// node, all at once: with storepkg from a binary cache, and with runc
// from OCI images in a registry whose layers are what Dockerfiles make of
// the same files (base / runtime / installs / app; a base and a runtime
// built on two dates, runtimes installed by an app's own RUN line). It
// counts what the servers sent and what the node keeps, and checks that
// storepkg fetched and stored every shared path exactly once.
func BenchmarkSharing(b *testing.B) {
	setup(b)
	bc := loadBenchClosure(b)
	tmp := b.TempDir()
	res := &benchtest.SharingResult{Load: map[string]string{"start": benchtest.LoadAvg()}}

	// The apps' own store paths, in a cache of their own.
	_, priv, _ := ed25519.GenerateKey(nil)
	appKey := narinfo.SecretKey{Name: "bench-apps-1", Key: priv}
	appCacheDir := filepath.Join(tmp, "apps-cache")
	w, err := cachetest.NewWriter(appCacheDir, appKey, true)
	if err != nil {
		b.Fatal(err)
	}
	baseRoots := make([]string, len(sharingBase))
	for i, n := range sharingBase {
		baseRoots[i] = bc.find(b, n)
	}
	busybox := bc.find(b, "busybox-1.35.0")
	appSrc := map[string]string{}
	tops := make([]string, len(sharingApps))
	for i, a := range sharingApps {
		refs := append([]string(nil), baseRoots...)
		if a.Runtime != "" {
			refs = append(refs, bc.find(b, sharingRuntimes[a.Runtime].name))
		}
		for _, e := range a.Extras {
			refs = append(refs, bc.find(b, e))
		}
		p := cachetest.MakePath("bench-apps", "app-"+a.Name)
		src := filepath.Join(tmp, "apps-src", p.Base())
		if err := writeAppTree(src, a, busybox); err != nil {
			b.Fatal(err)
		}
		var sps []storepath.Path
		for _, r := range refs {
			sp, err := storepath.Parse(r)
			if err != nil {
				b.Fatal(err)
			}
			sps = append(sps, sp)
		}
		if _, err := w.Add(p, src, sps); err != nil {
			b.Fatal(err)
		}
		appSrc[p.Base()] = src
		tops[i] = p.Absolute()
	}
	cache, err := benchtest.LoadCache(append([]string{appCacheDir}, bc.dirs...)...)
	if err != nil {
		b.Fatal(err)
	}
	bc.cache = cache
	srcOf := func(base string) string {
		if s, ok := appSrc[base]; ok {
			return s
		}
		return bc.src(base)
	}
	fileBytes := map[string]int64{}
	sizeOf := func(base string) int64 {
		if n, ok := fileBytes[base]; ok {
			return n
		}
		u, err := benchtest.TreeUsage(srcOf(base))
		if err != nil {
			b.Fatal(err)
		}
		fileBytes[base] = u.Bytes
		return u.Bytes
	}

	// Closures, the union and what is shared.
	closures := make([][]string, len(sharingApps))
	inClosures := map[string]int{}
	for i := range sharingApps {
		closures[i] = mustClosure(b, bc, tops[i])
		for _, p := range closures[i] {
			inClosures[p]++
			res.SumOfClosures.FileBytes += sizeOf(p)
		}
	}
	var union []string
	for p, n := range inClosures {
		union = append(union, p)
		res.Union.FileBytes += sizeOf(p)
		if n > 1 {
			res.Shared.Paths++
			res.Shared.FileBytes += sizeOf(p)
		}
	}
	sort.Strings(union)
	res.Union.Paths = len(union)
	res.ClosuresWith = map[string]int{}
	for _, name := range []string{"glibc", "libssl-3", "python3-3.11.2", "perl-5.36.0", "ncurses-6.4"} {
		res.ClosuresWith[name] = inClosures[filepath.Base(bc.find(b, name))]
	}
	res.Union.ZstdBytes = cache.FileSize(union)

	// The images.
	layers, err := benchtest.NewLayers(filepath.Join(tmp, "layers"))
	if err != nil {
		b.Fatal(err)
	}
	reg := benchtest.StartRegistry(b, filepath.Join(tmp, "registry"))
	storePaths := func(bases []string) []benchtest.StorePath {
		out := make([]benchtest.StorePath, len(bases))
		for i, base := range bases {
			out[i] = benchtest.StorePath{Base: base, Src: srcOf(base)}
		}
		return out
	}
	baseClosure := mustClosure(b, bc, baseRoots...)
	refs := make([]string, len(sharingApps))
	chains := make([][]*benchtest.Layer, len(sharingApps))
	for i, a := range sharingApps {
		appDate := time.Date(2025, 3, 10+i, 0, 0, 0, 0, time.UTC)
		type group struct {
			label string
			paths []string
			date  time.Time
		}
		groups := []group{{"base@" + a.Base, baseClosure, sharingBaseDate[a.Base]}}
		have := baseClosure
		if a.Runtime != "" {
			rt := sharingRuntimes[a.Runtime]
			rtPaths := minus(mustClosure(b, bc, bc.find(b, rt.name)), have)
			groups = append(groups, group{a.Runtime, rtPaths, rt.date})
			have = append(append([]string(nil), have...), rtPaths...)
		}
		top := filepath.Base(tops[i])
		if deps := minus(minus(closures[i], have), []string{top}); len(deps) > 0 {
			groups = append(groups, group{"RUN install " + strings.Join(a.Extras, " "), deps, appDate})
		}
		groups = append(groups, group{"COPY app", []string{top}, appDate})
		ar := benchtest.SharingAppResult{SharingApp: a.SharingApp, Paths: len(closures[i])}
		for _, p := range closures[i] {
			ar.FileBytes += sizeOf(p)
		}
		for _, g := range groups {
			l, err := layers.Layer(storePaths(g.paths), g.date)
			if err != nil {
				b.Fatal(err)
			}
			chains[i] = append(chains[i], l)
			ar.Layers = append(ar.Layers, fmt.Sprintf("%s %s %d", g.label, l.Hash().Hex[:12], l.Bytes()))
			ar.ImageZstd += l.Bytes()
		}
		img, err := benchtest.Image(chains[i], v1.Config{WorkingDir: "/"}, appDate)
		if err != nil {
			b.Fatal(err)
		}
		if refs[i], err = reg.Push(context.Background(), "bench/"+a.Name, "v1", img); err != nil {
			b.Fatal(err)
		}
		res.Apps = append(res.Apps, ar)
	}
	appsServer := benchtest.ServeCache(b, append([]string{appCacheDir}, bc.dirs...)...)

	env := critest.Start(b, critest.Options{
		ShimPath: fixture.shim,
		StorepkgOptions: map[string]any{
			"Substituters":      []string{appsServer.URL},
			"TrustedPublicKeys": []string{fixture.key.Public, bc.key, appKey.Public().String()},
		},
		RegistryHosts: map[string]string{reg.Host: reg.URL},
		CrictlTimeout: 5 * time.Minute,
	})
	command := []string{busybox + "/bin/sh", "-c", "echo hello from $0; exec sleep 3600"}

	// runAll starts the ten pods at once and returns their IDs and the
	// time until the last one printed its line.
	runAll := func(b *testing.B, spec func(i int) podSpec) ([]string, float64) {
		b.Helper()
		ids := make([]string, len(sharingApps))
		errs := make([]error, len(sharingApps))
		var wg sync.WaitGroup
		start := time.Now()
		for i := range sharingApps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := spec(i)
				tag := s.label + "-" + sharingApps[i].Name
				s.command = append(append([]string(nil), command...), tag)
				r, err := startPod(env, s, tag, "hello from "+tag)
				ids[i], errs[i] = r.PodID, err
			}()
		}
		wg.Wait()
		elapsed := ms(time.Since(start))
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
		return ids, elapsed
	}
	usage := func(dir string) int64 {
		u, err := benchtest.TreeUsage(dir)
		if err != nil {
			b.Fatal(err)
		}
		return u.Bytes
	}
	contentDir := filepath.Join(env.Root, "io.containerd.content.v1.content")
	snapshotsDir := filepath.Join(env.Root, "io.containerd.snapshotter.v1.overlayfs")

	b.Run("storepkg", func(b *testing.B) {
		wipeStore(b, env)
		rootBefore := usage(env.Root)
		appsServer.Reset()
		ids, elapsed := runAll(b, func(i int) podSpec {
			return podSpec{label: "sp", handler: critest.HandlerStorepkg, annotations: paths(tops[i]), image: critest.PauseImage}
		})
		s := &res.Storepkg
		s.AllRunningMS = elapsed
		s.ServedBytes = appsServer.Total(nil).Bytes
		nars := appsServer.Total(benchtest.IsNAR)
		s.PayloadBytes, s.Requests = nars.Bytes, nars.Requests
		s.Repeated = appsServer.Repeated(benchtest.IsNAR)
		served := appsServer.Paths()
		storeDir := filepath.Join(env.StoreRoot, "nix", "store")
		// One walk of /nix: the store views hard-link the store's files,
		// which must count once.
		nixTotal := usage(filepath.Join(env.StoreRoot, "nix"))
		s.DiskDetail = map[string]int64{
			"nix_store":  usage(storeDir),
			"containerd": usage(env.Root) - rootBefore,
		}
		s.DiskDetail["nix_var"] = nixTotal - s.DiskDetail["nix_store"] // database, roots; views are links
		s.DiskBytes = nixTotal + s.DiskDetail["containerd"]

		// Every path of the union was fetched once, is in the store once,
		// and the store holds nothing else.
		var problems []string
		for _, p := range union {
			n := served[cache.NARURL(p)].Requests
			if n != 1 {
				problems = append(problems, fmt.Sprintf("%s fetched %d times", p, n))
			}
			if n > 1 && inClosures[p] > 1 {
				s.SharedTransferredTwice++
			}
			if n > s.MaxCopies {
				s.MaxCopies = n
			}
		}
		entries, _ := os.ReadDir(storeDir)
		var inStore []string
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), ".") && !strings.HasSuffix(e.Name(), ".lock") {
				inStore = append(inStore, e.Name())
			}
		}
		if strings.Join(inStore, " ") != strings.Join(union, " ") {
			problems = append(problems, fmt.Sprintf("the store holds %d entries, the union of the closures is %d paths", len(inStore), len(union)))
		}
		if got := s.DiskDetail["nix_store"]; got != res.Union.FileBytes {
			problems = append(problems, fmt.Sprintf("the store holds %d file bytes, the union %d", got, res.Union.FileBytes))
			s.ExtraCopyBytes = got - res.Union.FileBytes
		}
		s.Pass = len(problems) == 0
		s.Why = strings.Join(problems, "; ")
		for _, id := range ids {
			removePod(b, env, id)
		}
		b.Logf("storepkg: %d NAR GETs, %d bytes served, %d bytes on the node, all running in %.0f ms; every shared path once: %v %s",
			s.Requests, s.ServedBytes, s.DiskBytes, s.AllRunningMS, s.Pass, s.Why)
		b.ReportMetric(float64(s.ServedBytes)/1e6, "MB-served")
		b.ReportMetric(float64(s.DiskBytes)/1e6, "MB-disk")
		b.ReportMetric(0, "ns/op")
	})

	b.Run("oci", func(b *testing.B) {
		contentBefore, snapshotsBefore, rootBefore := usage(contentDir), usage(snapshotsDir), usage(env.Root)
		reg.Reset()
		ids, elapsed := runAll(b, func(i int) podSpec {
			return podSpec{label: "oci", handler: critest.HandlerRunc, image: refs[i], pull: true}
		})
		s := &res.OCI
		s.AllRunningMS = elapsed
		s.ServedBytes = reg.Total(nil).Bytes
		blobs := reg.Total(benchtest.IsBlob)
		s.PayloadBytes, s.Requests = blobs.Bytes, blobs.Requests
		s.Repeated = reg.Repeated(benchtest.IsBlob)
		s.DiskDetail = map[string]int64{
			"content_store": usage(contentDir) - contentBefore,
			"snapshots":     usage(snapshotsDir) - snapshotsBefore,
		}
		s.DiskDetail["containerd_other"] = usage(env.Root) - rootBefore - s.DiskDetail["content_store"] - s.DiskDetail["snapshots"]
		s.DiskBytes = usage(env.Root) - rootBefore

		// Copies of each store path: transferred once per distinct layer
		// blob holding it, unpacked once per distinct snapshot (layer
		// chain) holding it.
		blobsWith := map[string]map[string]bool{}
		chainsWith := map[string]map[string]bool{}
		for _, chain := range chains {
			key := ""
			for _, l := range chain {
				key += l.Hash().Hex + "/"
				for _, p := range l.Paths {
					if blobsWith[p] == nil {
						blobsWith[p], chainsWith[p] = map[string]bool{}, map[string]bool{}
					}
					blobsWith[p][l.Hash().Hex] = true
					chainsWith[p][key] = true
				}
			}
		}
		type copied struct {
			name   string
			copies int
			extra  int64
		}
		var most []copied
		for _, p := range union {
			if inClosures[p] < 2 {
				continue
			}
			if n := len(chainsWith[p]); n > 1 {
				most = append(most, copied{p[33:], n, int64(n-1) * sizeOf(p)})
			}
			if len(chainsWith[p]) > 1 {
				s.SharedStoredTwice++
				s.ExtraCopyBytes += int64(len(chainsWith[p])-1) * sizeOf(p)
			}
			if len(blobsWith[p]) > 1 {
				s.SharedTransferredTwice++
			}
			s.MaxCopies = max(s.MaxCopies, len(chainsWith[p]))
		}
		sort.Slice(most, func(i, j int) bool { return most[i].extra > most[j].extra })
		for i, m := range most {
			if i == 6 {
				break
			}
			s.MostCopies = append(s.MostCopies, fmt.Sprintf("%s %d %d", m.name, m.copies, m.extra))
		}
		s.Pass = s.SharedStoredTwice == 0 && s.SharedTransferredTwice == 0 && len(s.Repeated) == 0
		if !s.Pass {
			s.Why = fmt.Sprintf("%d of %d shared store paths unpacked more than once (up to %d copies), %d downloaded in more than one blob", s.SharedStoredTwice, res.Shared.Paths, s.MaxCopies, s.SharedTransferredTwice)
		}
		for _, id := range ids {
			removePod(b, env, id)
		}
		b.Logf("oci: %d blob GETs, %d bytes served, %d bytes on the node, all running in %.0f ms; %s",
			s.Requests, s.ServedBytes, s.DiskBytes, s.AllRunningMS, s.Why)
		b.ReportMetric(float64(s.ServedBytes)/1e6, "MB-served")
		b.ReportMetric(float64(s.DiskBytes)/1e6, "MB-disk")
		b.ReportMetric(0, "ns/op")
	})
	res.Load["end"] = benchtest.LoadAvg()
	benchtest.WriteResult(b, "sharing", res)
}

// writeAppTree makes an app's store path: the Go sources of its gosrc
// directories (real text, as an app's code and vendored libraries are)
// and bin/<name>, a script run by the base's busybox.
func writeAppTree(dst string, a sharingApp, busybox string) error {
	goroot := runtime.GOROOT()
	for _, d := range a.gosrc {
		src := filepath.Join(goroot, "src", d)
		err := filepath.WalkDir(src, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if e.IsDir() && e.Name() == "testdata" {
				return filepath.SkipDir
			}
			if !e.Type().IsRegular() {
				return nil
			}
			rel, _ := filepath.Rel(filepath.Join(goroot, "src"), p)
			out := filepath.Join(dst, "lib", a.Name, rel)
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
				return err
			}
			return os.WriteFile(out, data, 0o444)
		})
		if err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(dst, "bin"), 0o755); err != nil {
		return err
	}
	script := fmt.Sprintf("#!%s/bin/sh\necho %s ready\nexec sleep 3600\n", busybox, a.Name)
	return os.WriteFile(filepath.Join(dst, "bin", a.Name), []byte(script), 0o555)
}
