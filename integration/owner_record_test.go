package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
)

// TestNoRootsWithoutOwnerRecord: when the shim cannot write the owner
// record of the pod's GC roots (here a file stands where the owners
// directory goes), it makes no roots, which no sweep would ever remove:
// the container's start fails saying why, nothing is rooted, and once
// the record can be written the next container of the pod starts.
func TestNoRootsWithoutOwnerRecord(t *testing.T) {
	setup(t)
	url, _, _ := serveCache(t)
	env := startEnv(t, []string{url}, []string{fixture.key.Public})
	fx := fixture.fx
	owners := filepath.Join(env.StoreRoot, "nix/var/storepkg/owners")
	if err := os.MkdirAll(filepath.Dir(owners), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(owners, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	pod := env.PodConfig("no-owner-record", "default", paths(fx.Hello, fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	ctr := env.ContainerConfig("app", critest.PauseImage, []string{"hello-dyn", "storepkg"})
	id, err := env.CreateContainer(t, podID, ctr, pod)
	if err != nil {
		t.Fatal(err)
	}
	out, err := env.CrictlErr("start", id)
	if err == nil {
		t.Fatalf("start succeeded: %s", out)
	}
	for _, want := range []string{"cannot record this shim as the holder of the pod's GC roots", owners, "not a directory"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("start error does not say %q:\n%v", want, err)
		}
	}
	t.Logf("start error: %v", err)
	assertRoots(t, env, 0, "without an owner record")
	env.Rm(t, id)

	if err := os.Remove(owners); err != nil {
		t.Fatal(err)
	}
	ctr["metadata"] = map[string]any{"name": "app", "attempt": 1}
	id, err = env.CreateContainer(t, podID, ctr, pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id)
	env.WaitLogs(t, id, "hello from storepkg, linked dynamically", 30*time.Second)
	assertRoots(t, env, 2, "once the record could be written")
	if _, err := os.Stat(filepath.Join(owners, podID+".json")); err != nil {
		t.Errorf("owner record: %v", err)
	}
	env.Stop(t, id)
	env.Rm(t, id)
	env.StopPod(t, podID)
	env.RmPod(t, podID)
	assertNothingLeft(t, env, id)
	assertRoots(t, env, 0, "after rm")
}
