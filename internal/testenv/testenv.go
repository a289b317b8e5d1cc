// Package testenv decides what a test does when this machine lacks a
// component it needs (a program, root): outside CI it skips; in CI (the
// environment variable CI set) it fails, so CI never runs less than the
// whole suite without saying so.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run in CI.
func InCI() bool { return os.Getenv("CI") != "" }

// Unavailable skips the test, or fails it in CI, with the message.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("%s: required in CI (make test installs what the tests need and runs them as root)", msg)
	}
	t.Skip(msg + " (make test installs what the tests need)")
}

// LookPath returns the path of each program, in order; a missing one
// makes the test Unavailable.
func LookPath(t testing.TB, names ...string) []string {
	t.Helper()
	paths := make([]string, len(names))
	for i, name := range names {
		p, err := exec.LookPath(name)
		if err != nil {
			Unavailable(t, "%s is not installed: %v", name, err)
		}
		paths[i] = p
	}
	return paths
}

// Root makes the test Unavailable unless it runs as root; why says what
// needs it.
func Root(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root to %s", why)
	}
}
