package integration

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/cachetest"
	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/narinfo"
)

// TestBadAnnotations: each mistake fails the container's start with a
// message naming the annotation or path and the cause, and leaves nothing.
func TestBadAnnotations(t *testing.T) {
	setup(t)
	url, _, _ := serveCache(t)

	// A second cache, signed by a key the node does not trust.
	_, priv, _ := ed25519.GenerateKey(nil)
	untrustedKey := narinfo.SecretKey{Name: "stranger-1", Key: priv}
	untrustedDir := filepath.Join(t.TempDir(), "untrusted")
	w, err := cachetest.NewWriter(untrustedDir, untrustedKey, false)
	if err != nil {
		t.Fatal(err)
	}
	strangerRoot, _, err := w.Synthetic("stranger", 3)
	if err != nil {
		t.Fatal(err)
	}
	untrusted := nixtest.Serve(t, untrustedDir, nil)
	env := startEnv(t, []string{url, untrusted}, []string{fixture.key.Public})

	unknown := cachetest.MakePath("nowhere", "missing-1.0").Absolute()
	for _, c := range []struct {
		name, value, want string
		syntax            bool // refused by the annotation parser, before any fetch
	}{
		{"not a store path", "/usr/bin/env", "not in /nix/store", true},
		{"dotdot", "/nix/store/../etc/passwd", "names a file inside a store path", true},
		{"bad hash chars", "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x", "bad hash character", true},
		{"unknown path", unknown, unknown + ": not found in any cache", false},
		{"untrusted signature", strangerRoot.Absolute(), strangerRoot.Absolute() + ": no trusted signature (signed by stranger-1, trusted: shim-test-1)", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			pod := env.PodConfig("bad", "default", paths(c.value))
			podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
			id, err := env.CreateContainer(t, podID, env.ContainerConfig("app", critest.PauseImage, []string{"sleep", "1"}), pod)
			if err != nil {
				t.Fatal(err)
			}
			out, err := env.CrictlErr("start", id)
			if err == nil {
				t.Fatalf("start succeeded: %s", out)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("start error does not say %q:\n%v", c.want, err)
			}
			if c.syntax && (!strings.Contains(err.Error(), "annotation storepkg.dev/paths: invalid store path") || !strings.Contains(err.Error(), "InvalidArgument")) {
				t.Errorf("start error does not name the annotation or is not InvalidArgument:\n%v", err)
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
