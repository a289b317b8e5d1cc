package integration

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/nixtest"
)

// TestTwoClosuresAndMixedPod: two containers on different closures see
// only their own; a plain image container runs beside a storepkg one.
func TestTwoClosuresAndMixedPod(t *testing.T) {
	setup(t)
	url, _, _ := serveCache(t)
	env := startEnv(t, []string{url}, []string{fixture.key.Public})
	fx := fixture.fx

	annotations := map[string]string{
		"storepkg.dev/paths.full":  fx.Hello + "," + fx.Tools,
		"storepkg.dev/paths.tools": fx.Tools,
	}
	pod := env.PodConfig("two", "default", annotations)
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	ids := map[string]string{}
	for name, cmd := range map[string][]string{
		"full":  {"hello-dyn", "full"},
		"tools": {"sleep", "3600"},
		"plain": {"sleep", "3600"},
	} {
		image := critest.PauseImage
		if name == "plain" {
			image = critest.BusyboxImage
		}
		id, err := env.CreateContainer(t, podID, env.ContainerConfig(name, image, cmd), pod)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		env.Start(t, id)
		ids[name] = id
	}
	env.WaitLogs(t, ids["full"], "hello from full", 30*time.Second)

	toolsView := strings.Fields(env.Exec(t, ids["tools"], "ls", "/nix/store"))
	slices.Sort(toolsView)
	wantTools := baseNames(nixtest.QueryClosure(t, fx.Store, fx.Tools))
	if !slices.Equal(toolsView, wantTools) {
		t.Errorf("tools container sees %v, want %v", toolsView, wantTools)
	}
	// The plain container is its image: busybox at /bin, no /nix.
	if out, err := env.ExecErr(ids["plain"], "ls", "/nix"); err == nil {
		t.Errorf("plain container has /nix: %s", out)
	}
	if out := env.Exec(t, ids["plain"], "echo", "plain"); out != "plain\n" {
		t.Errorf("plain container: %q", out)
	}
	env.StopPod(t, podID)
	env.RmPod(t, podID)
	for _, id := range ids {
		assertNothingLeft(t, env, id)
	}
}
