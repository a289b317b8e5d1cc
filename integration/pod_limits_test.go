package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/nixtest"
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

// TestPodClosureLimit: MaxClosureNarBytes bounds what the whole pod adds
// to the store. Two containers whose closures each fit, but not together
// (their shared paths counted once), are refused before any NAR is
// downloaded; the same node runs a pod with either one.
func TestPodClosureLimit(t *testing.T) {
	setup(t)
	hello, tools := fixture.fx.Hello, fixture.fx.Tools
	narBytes := func(roots ...string) int64 {
		closure := strings.Fields(nixtest.Run(t, "nix-store", append([]string{"--store", nixtest.StoreURI(fixture.fx.Store), "-qR"}, roots...)...))
		var sum int64
		for _, p := range closure {
			n, err := strconv.ParseInt(strings.TrimSpace(nixtest.Run(t, "nix-store", "--store", nixtest.StoreURI(fixture.fx.Store), "-q", "--size", p)), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			sum += n
		}
		return sum
	}
	limit := max(narBytes(hello), narBytes(tools))
	if both := narBytes(hello, tools); both <= limit {
		t.Fatalf("the fixture's closures: together %d bytes, the larger alone %d: want the pair larger", both, limit)
	}
	url, gets, _ := serveCache(t)
	env := critest.Start(t, critest.Options{
		ShimPath: fixture.shim,
		StorepkgOptions: map[string]any{
			"Substituters":       []string{url},
			"TrustedPublicKeys":  []string{fixture.key.Public},
			"MaxClosureNarBytes": limit,
		},
	})

	pod := env.PodConfig("pod-limit", "default", map[string]string{"storepkg.dev/paths.a": hello, "storepkg.dev/paths.b": tools})
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	var ids []string
	for _, name := range []string{"a", "b"} {
		id, err := env.CreateContainer(t, podID, env.ContainerConfig(name, critest.PauseImage, []string{"sleep", "1"}), pod)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		out, err := env.CrictlErr("start", id)
		if err == nil {
			t.Fatalf("start of %s succeeded: %s", name, out)
		}
		for _, w := range []string{"together with the 1 other paths it is counted with", "more than the limit of " + strconv.FormatInt(limit, 10), "MaxClosureNarBytes", "ResourceExhausted"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("start of %s: error does not say %q:\n%v", name, w, err)
			}
		}
	}
	if g := gets(); len(g) != 0 {
		t.Errorf("NARs downloaded: %v", g)
	}
	for _, id := range ids {
		env.Rm(t, id)
	}
	env.StopPod(t, podID)
	env.RmPod(t, podID)

	// Either closure alone fits.
	pod = env.PodConfig("pod-limit-one", "default", paths(tools))
	podID = env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	id, err := env.CreateContainer(t, podID, env.ContainerConfig("a", critest.PauseImage, []string{"sleep", "1"}), pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Crictl(t, "start", id)
	env.Crictl(t, "stop", id)
	env.Rm(t, id)
	env.StopPod(t, podID)
	env.RmPod(t, podID)
	assertNothingLeft(t, env, id)
}
