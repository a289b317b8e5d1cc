package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/nixtest"
)

// TestContainerLifecycle: a dynamically linked program whose interpreter
// and libraries live in other store paths runs from its closure; the view
// shows exactly the closure, read-only; CRI's files, a host volume and
// exec with PATH work; after removal nothing of the container is left.
func TestContainerLifecycle(t *testing.T) {
	setup(t)
	url, _, _ := serveCache(t)
	env := startEnv(t, []string{url}, []string{fixture.key.Public})
	fx := fixture.fx

	pod := env.PodConfig("lifecycle", "default", paths(fx.Hello, fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	volume := t.TempDir()
	os.Chmod(volume, 0o777)
	ctr := env.ContainerConfig("app", critest.PauseImage, []string{"hello-dyn", "storepkg"})
	ctr["mounts"] = []any{critest.Mount(volume, "/data", false)}
	id, err := env.CreateContainer(t, podID, ctr, pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id)
	env.WaitLogs(t, id, "hello from storepkg, linked dynamically", 30*time.Second)

	// The view holds exactly the closure; PATH leads to it.
	assertClosureView(t, env, id, fx)
	// Read-only: neither the store directory nor a path in it can be written.
	for _, target := range []string{"/nix/store/new-file", fx.Hello + "/new-file"} {
		if out, err := env.ExecErr(id, "touch", target); err == nil {
			t.Errorf("touch %s succeeded: %s", target, out)
		}
	}
	if out := env.Exec(t, id, "cat", "/etc/hosts"); !strings.Contains(out, "localhost") {
		t.Errorf("/etc/hosts: %q", out)
	}
	env.Exec(t, id, "cat", "/etc/resolv.conf")
	if out := env.Exec(t, id, "cat", "/etc/hostname"); !strings.Contains(out, "lifecycle") {
		t.Errorf("/etc/hostname: %q", out)
	}
	env.Exec(t, id, "sh", "-c", "echo written-inside > /data/file")
	if b, err := os.ReadFile(filepath.Join(volume, "file")); err != nil || string(b) != "written-inside\n" {
		t.Errorf("volume: %q, %v", b, err)
	}

	assertRoots(t, env, 2, "while running (one per root path)")
	env.Stop(t, id)
	env.Rm(t, id)
	env.StopPod(t, podID)
	env.RmPod(t, podID)

	assertNothingLeft(t, env, id)
	assertRoots(t, env, 0, "after rm")
	out, err := nixtest.Cmd("nix-store", append([]string{"--store", nixtest.StoreURI(env.StoreRoot), "--check-validity"}, fx.Closure...)...).CombinedOutput()
	if err != nil {
		t.Errorf("store paths no longer valid after rm: %v\n%s", err, out)
	}
	nixtest.Verify(t, env.StoreRoot)
}
