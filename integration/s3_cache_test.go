package integration

import (
	"net/url"
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
	"github.com/storepkg/storepkg/internal/s3test"
)

// TestS3CachePod: a pod through the shim on containerd 2.3 runs from a
// closure that only an S3 bucket holds (a real S3 server, SeaweedFS, on
// 127.0.0.1). The fetch child gets its credentials as docs/runtime.md
// tells node admins to give them: a shared credentials file named in the
// shims' environment (containerd's shim manager `env`), never in the
// runtime options or on a command line.
func TestS3CachePod(t *testing.T) {
	setup(t)
	srv := s3test.Start(t)
	srv.UploadCache(t, "nix-cache", fixture.cache)
	// Nothing of this process's AWS environment reaches containerd.
	s3test.SetAWSEnv(t, nil)
	cache := "s3://nix-cache?endpoint=" + url.QueryEscape(srv.Endpoint) + "&region=" + s3test.Region
	env := critest.Start(t, critest.Options{
		ShimPath: fixture.shim,
		ShimEnv:  srv.WriteSharedConfig(t, t.TempDir(), nil),
		StorepkgOptions: map[string]any{
			"Substituters":      []string{cache},
			"TrustedPublicKeys": []string{fixture.key.Public},
		},
	})
	fx := fixture.fx

	pod := env.PodConfig("s3", "default", paths(fx.Hello, fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	id, err := env.CreateContainer(t, podID, env.ContainerConfig("hello", critest.PauseImage, []string{"hello-dyn", "s3"}), pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id)
	env.WaitLogs(t, id, "hello from s3", 60*time.Second)
	env.StopPod(t, podID)
	env.RmPod(t, podID)
	assertNothingLeft(t, env, id)
}
