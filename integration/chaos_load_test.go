package integration

// Chaos: load. 50 pods at once on one node over overlapping closures,
// ten of them deleted while their fetch runs, and the node's garbage
// collection running alongside the whole time.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/pkg/fetchrecord"
	"github.com/storepkg/storepkg/pkg/store"
)

func loadScenarios() []chaosScenario {
	return []chaosScenario{{name: "fifty-pods-deletes-and-gc", run: fiftyPods}}
}

const (
	loadPods    = 50
	loadDeleted = 10
)

// fiftyPods starts 50 pods at once. 40 run on four closures that share
// paths (hello+tools, tools, hello, libgreet+tools: glibc is in three,
// tools in three), from a cache that answers each NAR 300ms late, so
// that many fetches want the same path at the same time. 10 more name a
// closure of 12 paths whose root's NAR never comes, and are deleted
// while their fetch runs, once the rest of it is valid: garbage the
// collection deletes while other fetches of it may still run. Meanwhile the collection the agent runs under disk
// pressure (store.CollectNodeGarbage, no minimum age) runs in a loop.
// Every surviving pod's container runs its closure.
func fiftyPods(t *testing.T, r *chaosRun) {
	fx := fixture.fx
	cache := serveFaultCache(t, fixture.cache)
	cache.add(anyNAR, fault{delay: 300 * time.Millisecond}, 0)
	slowDir, slowRoot, slowKey := smallClosure.get(t)
	slow := serveFaultCache(t, slowDir)
	slowNAR := "/" + readNarInfo(t, slowDir, slowRoot.Absolute()).URL
	// The root's NAR never comes while its fetches wait for it.
	slow.add(func(path string, _, _ int) bool { return path == slowNAR }, fault{holdHeaders: true}, 0)
	env := r.start(chaosOptions{
		substituters: []string{cache.URL, slow.URL},
		keys:         []string{fixture.key.Public, slowKey},
	})
	var libgreet string
	for _, p := range fx.Closure {
		if strings.HasSuffix(p, "-libgreet-1.0") {
			libgreet = p
		}
	}
	sleepCmd := []string{"sh", "-c", "echo up; exec sleep 3600"}
	helloA, wantA := helloCmd("a load pod")
	kinds := []struct {
		paths []string
		cmd   []string
		want  string
	}{
		{[]string{fx.Hello, fx.Tools}, helloA, wantA},
		{[]string{fx.Tools}, sleepCmd, "up"},
		{[]string{fx.Hello}, helloA, wantA},
		{[]string{libgreet, fx.Tools}, sleepCmd, "up"},
	}

	// The collection, in a loop until the pods are up.
	ctx, stopGC := context.WithCancel(context.Background())
	var gcRuns, gcDeleted atomic.Int64
	var gcErrs []error
	gcDone := make(chan struct{})
	go func() {
		defer close(gcDone)
		for ctx.Err() == nil {
			if st, err := store.Open(ctx, r.storeRoot); err == nil {
				res, err := st.CollectNodeGarbage(ctx, store.GCOptions{})
				st.Close()
				if err != nil && ctx.Err() == nil {
					gcErrs = append(gcErrs, err)
				}
				if res != nil && res.GC != nil {
					gcRuns.Add(1)
					gcDeleted.Add(int64(res.GC.Valid))
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	defer func() { stopGC(); <-gcDone }()

	var (
		wg           sync.WaitGroup
		mu           sync.Mutex
		running      []string // pods whose container runs
		deletedMidst int      // deleted while their fetch was still running
		failedStarts int
	)
	ready := make(chan struct{})
	r.fault()
	for i := range loadPods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-ready
			name := fmt.Sprintf("load-%02d", i)
			if i < loadDeleted {
				pod := env.PodConfig(name, "default", paths(slowRoot.Absolute(), fx.Tools))
				podID, err := env.RunPodSandboxErr(critest.HandlerStorepkg, pod)
				if err != nil {
					t.Errorf("%s: %v", name, err)
					return
				}
				// Deleted while its fetch waits for the root (the rest of
				// the closure valid by then, fetched by it or another).
				fetching := false
				for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
					if rs := recordsOf(readRecords(t, r.statusDir), name); len(rs) == 1 && rs[0].State == fetchrecord.Fetching {
						fetching = true
						break
					}
				}
				deletePod(t, env, podID)
				mu.Lock()
				if fetching {
					deletedMidst++
				}
				mu.Unlock()
				return
			}
			k := kinds[i%len(kinds)]
			pod := env.PodConfig(name, "default", paths(k.paths...))
			podID, err := env.RunPodSandboxErr(critest.HandlerStorepkg, pod)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				return
			}
			_, errs := runContainer(t, env, podID, pod, k.cmd, k.want, 3*time.Minute)
			mu.Lock()
			running = append(running, podID)
			failedStarts += len(errs)
			mu.Unlock()
		}()
	}
	close(ready)
	wg.Wait()
	r.markRecovered()
	stopGC()
	<-gcDone
	r.note("%d pods running, %d deleted (%d of them while their fetch ran), %d failed starts; %d collections alongside deleted %d paths",
		len(running), loadDeleted, deletedMidst, failedStarts, gcRuns.Load(), gcDeleted.Load())
	for _, err := range gcErrs {
		t.Errorf("a collection alongside failed: %v", err)
	}
	if len(running) != loadPods-loadDeleted {
		t.Errorf("%d pods running, want %d", len(running), loadPods-loadDeleted)
	}
	if deletedMidst < loadDeleted/2 {
		t.Errorf("only %d of %d pods were deleted while their fetch ran", deletedMidst, loadDeleted)
	}
	if gcRuns.Load() == 0 {
		t.Error("no collection ran alongside the pods")
	}
	for p, n := range nars(cache.requests()) {
		if n != 1 {
			t.Errorf("%s downloaded %d times: concurrent fetches of a path should wait for the one downloading it", p, n)
		}
	}
	if failedStarts > 0 {
		t.Errorf("%d container starts failed (the collection or a concurrent fetch got in a start's way)", failedStarts)
	}

	sem := make(chan struct{}, 10)
	for _, id := range running {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			deletePod(t, env, id)
		}()
	}
	wg.Wait()
}
