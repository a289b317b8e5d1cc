package procid

import (
	"encoding/json"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

func TestAlive(t *testing.T) {
	if alive, known := Self().Alive(); !alive || !known {
		t.Errorf("self: alive %v known %v", alive, known)
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := Self()
	w.PID = cmd.Process.Pid
	w.StartTicks, _ = startTicks(strconv.Itoa(w.PID))
	if alive, known := w.Alive(); !alive || !known {
		t.Errorf("running child: alive %v known %v", alive, known)
	}
	reused := w
	reused.StartTicks++
	if alive, known := reused.Alive(); alive || !known {
		t.Errorf("PID reused by another process: alive %v known %v", alive, known)
	}
	// Killed and not yet waited for: a zombie, which holds nothing.
	cmd.Process.Kill()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if state, _, _ := stat(strconv.Itoa(w.PID)); state == "Z" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the killed child never became a zombie")
		}
	}
	if alive, known := w.Alive(); alive || !known {
		t.Errorf("zombie child: alive %v known %v", alive, known)
	}
	cmd.Wait()
	if alive, known := w.Alive(); alive || !known {
		t.Errorf("dead child: alive %v known %v", alive, known)
	}
	other := w
	other.PIDNamespace = "pid:[1]"
	if _, known := other.Alive(); known {
		t.Error("a writer in another PID namespace counted as known")
	}
}

// TestJSON: shims and readers of another version on the node read the
// same identity.
func TestJSON(t *testing.T) {
	const want = `{"pid":42,"pidNamespace":"pid:[4026531836]","startTicks":1234}`
	data, err := json.Marshal(ID{PID: 42, PIDNamespace: "pid:[4026531836]", StartTicks: 1234})
	if err != nil || string(data) != want {
		t.Errorf("JSON %s, %v; want %s", data, err, want)
	}
	if data, _ := json.Marshal(ID{PID: 7}); string(data) != `{"pid":7}` {
		t.Errorf("JSON of a bare PID: %s", data)
	}
}
