package integration

import (
	"testing"
	"time"

	"github.com/storepkg/storepkg/integration/critest"
)

// TestPrefetchSurvivesCancelledStart: the pod's closure starts downloading
// at sandbox creation; a start that gives up early (kubelet's deadline)
// does not stop it, and the retried container joins it: every NAR is
// downloaded once.
func TestPrefetchSurvivesCancelledStart(t *testing.T) {
	setup(t)
	url, gets, setDelay := serveCache(t)
	setDelay(700 * time.Millisecond)
	env := startEnv(t, []string{url}, []string{fixture.key.Public})
	fx := fixture.fx

	pod := env.PodConfig("prefetch", "default", paths(fx.Hello, fx.Tools))
	podID := env.RunPodSandbox(t, critest.HandlerStorepkg, pod)
	ctr := env.ContainerConfig("app", critest.PauseImage, []string{"hello-dyn", "retry"})
	id, err := env.CreateContainer(t, podID, ctr, pod)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := env.CrictlErr("--timeout", "1s", "start", id); err == nil {
		t.Fatalf("start within 1s succeeded, the test needs a slower cache: %s", out)
	}
	if n := len(gets()); n == len(fx.Closure) {
		t.Logf("all %d NARs already requested when the first start gave up", n)
	}
	// kubelet's retry: a new attempt of the container.
	ctr["metadata"] = map[string]any{"name": "app", "attempt": 1}
	id2, err := env.CreateContainer(t, podID, ctr, pod)
	if err != nil {
		t.Fatal(err)
	}
	env.Start(t, id2)
	env.WaitLogs(t, id2, "hello from retry", 30*time.Second)
	counts := gets()
	if len(counts) != len(fx.Closure) {
		t.Errorf("%d NARs downloaded, closure has %d", len(counts), len(fx.Closure))
	}
	for nar, n := range counts {
		if n != 1 {
			t.Errorf("%s downloaded %d times", nar, n)
		}
	}
	env.StopPod(t, podID)
	env.RmPod(t, podID)
}
