package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/storepkg/storepkg/integration/critest"
)

// TestPodLimits: a pod over the node's limits (runtime options) fails its
// container's start with a message naming the limit, and nothing is
// downloaded: too many path annotations are refused before any fetch
// child starts, a closure over MaxClosureNarBytes by the fetch child
// after its narinfos and before any NAR.
func TestPodLimits(t *testing.T) {
	setup(t)
	url, gets, _ := serveCache(t)
	env := critest.Start(t, critest.Options{
		ShimPath: fixture.shim,
		StorepkgOptions: map[string]any{
			"Substituters":       []string{url},
			"TrustedPublicKeys":  []string{fixture.key.Public},
			"MaxPathAnnotations": 2,
			"MaxClosureNarBytes": 1000, // hello's closure (glibc) is far larger
		},
	})
	hello := fixture.fx.Hello
	for _, c := range []struct {
		name        string
		annotations map[string]string
		want        []string
	}{
		{"closure NAR bytes", paths(hello), []string{
			"the closure of " + hello + " needs at least ", "more than the limit of 1000",
			"runtime options MaxClosureNarBytes, MaxClosurePaths", "ResourceExhausted",
		}},
		{"path annotations", map[string]string{
			"storepkg.dev/paths.a": hello, "storepkg.dev/paths.b": hello, "storepkg.dev/paths.c": hello,
		}, []string{
			"annotation storepkg.dev/paths.c: the pod has 3 storepkg.dev/paths.<container> annotations, more than the node's limit of 2 (runtime option MaxPathAnnotations)",
			"InvalidArgument",
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			pod := env.PodConfig("limits", "default", c.annotations)
			podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
			id, err := env.CreateContainer(t, podID, env.ContainerConfig("a", critest.PauseImage, []string{"sleep", "1"}), pod)
			if err != nil {
				t.Fatal(err)
			}
			out, err := env.CrictlErr("start", id)
			if err == nil {
				t.Fatalf("start succeeded: %s", out)
			}
			t.Logf("start error: %v", err)
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("start error does not say %q:\n%v", w, err)
				}
			}
			if g := gets(); len(g) != 0 {
				t.Errorf("NARs downloaded: %v", g)
			}
			if _, err := os.Lstat(filepath.Join(env.StoreRoot, hello)); !os.IsNotExist(err) {
				t.Errorf("%s in the node's store: %v", hello, err)
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
}
