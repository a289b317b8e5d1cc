package integration

import (
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/internal/nixtest"
)

// TestPerSystemPaths: a pod for a mixed cluster names its paths per Nix
// system. This node takes its own system's and the plain ones: the pod
// runs from them and the other system's path is never asked of a cache. A pod naming
// paths for another system only is refused, the error naming the
// annotation and this node's system, and leaves nothing.
func TestPerSystemPaths(t *testing.T) {
	setup(t)
	own, other := "x86_64-linux", "aarch64-linux"
	if runtime.GOARCH == "arm64" {
		own, other = other, own
	}
	// The other system's hello: no cache has it, so taking it would fail
	// the pod with "not found".
	otherHello := cachetest.MakePath("other-system", "hello-dyn").Absolute()
	var mu sync.Mutex
	var requests []string
	url := nixtest.Serve(t, fixture.cache, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			requests = append(requests, r.URL.Path)
			mu.Unlock()
			h.ServeHTTP(w, r)
		})
	})
	env := startEnv(t, []string{url}, []string{fixture.key.Public})
	fx := fixture.fx

	t.Run("both systems", func(t *testing.T) {
		pod := env.PodConfig("mixed", "default", map[string]string{
			"storepkg.dev/paths": other + ":" + otherHello + " " + own + ":" + fx.Hello + " " + fx.Tools,
		})
		podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
		id, err := env.CreateContainer(t, podID, env.ContainerConfig("app", critest.PauseImage, []string{"sh", "-c", "hello-dyn mixed; sleep 3600"}), pod)
		if err != nil {
			t.Fatal(err)
		}
		env.Start(t, id)
		env.WaitLogs(t, id, "hello from mixed", 30*time.Second)
		view := strings.Fields(env.Exec(t, id, "ls", "/nix/store"))
		slices.Sort(view)
		closure := append(nixtest.QueryClosure(t, fx.Store, fx.Hello), nixtest.QueryClosure(t, fx.Store, fx.Tools)...)
		slices.Sort(closure)
		if want := baseNames(slices.Compact(closure)); !slices.Equal(view, want) {
			t.Errorf("container sees %v, want the closure of hello and tools %v", view, want)
		}
		otherHash := strings.SplitN(filepath.Base(otherHello), "-", 2)[0]
		mu.Lock()
		for _, r := range requests {
			if strings.Contains(r, otherHash) {
				t.Errorf("the cache was asked for the other system's path: %s", r)
			}
		}
		mu.Unlock()
		env.StopPod(t, podID)
		env.RmPod(t, podID)
		assertNothingLeft(t, env, id)
	})

	t.Run("other system only", func(t *testing.T) {
		pod := env.PodConfig("foreign", "default", map[string]string{"storepkg.dev/paths": other + ":" + fx.Hello})
		podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
		id, err := env.CreateContainer(t, podID, env.ContainerConfig("app", critest.PauseImage, []string{"hello-dyn", "x"}), pod)
		if err != nil {
			t.Fatal(err)
		}
		out, err := env.CrictlErr("start", id)
		if err == nil {
			t.Fatalf("start succeeded: %s", out)
		}
		want := "annotation storepkg.dev/paths: no store paths for this node's system " + own + " (the annotation names paths for " + other + "; plain paths are for every system)"
		if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "FailedPrecondition") {
			t.Errorf("start error does not say %q with FailedPrecondition:\n%v", want, err)
		}
		env.Rm(t, id)
		env.StopPod(t, podID)
		env.RmPod(t, podID)
		assertNothingLeft(t, env, id)
		if entries, _ := os.ReadDir(filepath.Join(env.StoreRoot, "nix/var/nix/gcroots/storepkg")); len(entries) != 0 {
			t.Errorf("GC roots left: %v", entries)
		}
	})
}
