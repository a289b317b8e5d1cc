package integration

import (
	"crypto/ed25519"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/narinfo"
)

// TestLargeClosure: a container whose closure has 2,000 paths starts and
// sees all of them.
func TestLargeClosure(t *testing.T) {
	setup(t)
	url, _, _ := serveCache(t)
	_, priv, _ := ed25519.GenerateKey(nil)
	key := narinfo.SecretKey{Name: "synthetic-1", Key: priv}
	dir := filepath.Join(t.TempDir(), "synthetic")
	w, err := cachetest.NewWriter(dir, key, true)
	if err != nil {
		t.Fatal(err)
	}
	root, all, err := w.Synthetic("large", 2000)
	if err != nil {
		t.Fatal(err)
	}
	synthetic := nixtest.Serve(t, dir, nil)
	env := startEnv(t, []string{url, synthetic}, []string{fixture.key.Public, key.Public().String()})

	pod := env.PodConfig("large", "default", paths(root.Absolute(), fixture.fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	id, err := env.CreateContainer(t, podID, env.ContainerConfig("app", critest.PauseImage, []string{"sleep", "3600"}), pod)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	env.Start(t, id)
	t.Logf("create+start with %d paths (fetch included): %v", len(all), time.Since(start))
	toolsClosure := nixtest.QueryClosure(t, fixture.fx.Store, fixture.fx.Tools)
	out := strings.TrimSpace(env.Exec(t, id, "sh", "-c", "ls /nix/store | wc -l"))
	if want := len(all) + len(toolsClosure); out != strconv.Itoa(want) {
		t.Errorf("%s paths visible, want %d", out, want)
	}
	env.StopPod(t, podID)
	env.RmPod(t, podID)
	assertNothingLeft(t, env, id)
}
