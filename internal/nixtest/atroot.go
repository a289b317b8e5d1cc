package nixtest

import (
	"bytes"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/storepkg/storepkg/internal/testenv"
)

// atRootScript assembles a new "/" on a tmpfs at $1 from the top-level
// entries of the store's root $2 and, for the names the root lacks, this
// machine's, then runs the rest of its arguments chrooted there. It runs
// in a private mount namespace, so nothing of it is seen outside.
const atRootScript = `set -eu
new=$1 root=$2
shift 2
PATH=$PATH:/usr/sbin:/sbin
mount -t tmpfs -o mode=0755 nixtest-root "$new"
add() { # add SOURCE NAME
	if [ -L "$1" ]; then
		ln -s "$(readlink "$1")" "$new/$2"
	elif [ -d "$1" ]; then
		mkdir "$new/$2"
		case $2 in
		dev|proc|sys) mount --rbind "$1" "$new/$2" ;;
		*) mount --bind "$1" "$new/$2" ;;
		esac
	elif [ -e "$1" ]; then
		: >"$new/$2"
		mount --bind "$1" "$new/$2"
	fi
}
for e in "$root"/*; do
	add "$e" "${e##*/}"
done
for e in /*; do
	n=${e##*/}
	if [ ! -e "$new/$n" ] && [ ! -L "$new/$n" ]; then
		add "$e" "$n"
	fi
done
exec chroot "$new" "$@"
`

// RunAtRoot runs a Nix command, with Env, as the Nix of a machine whose
// "/" is root would run it: in a private mount namespace whose "/" is
// made of root's top-level directories (its nix, home, run, ...) and,
// for the names root lacks, this machine's (usr, etc, proc, tmp, ...).
// Its default store is then root's store, seen at /nix, and the targets
// of indirect roots are looked up where that machine's Nix would look
// them up; `--store local?root=` instead looks them up on this machine.
// It returns stdout and fails the test with stderr on error. It needs
// root (to mount), so the test is Unavailable without it.
func RunAtRoot(t testing.TB, root, name string, args ...string) string {
	t.Helper()
	testenv.Root(t, "run Nix in a mount namespace whose / is a store's root")
	Require(t, name)
	cmd := Cmd("/bin/sh", append([]string{"-c", atRootScript, "sh", t.TempDir(), root, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if errors.Is(err, syscall.EPERM) {
		testenv.Unavailable(t, "cannot make a mount namespace: %v", err)
	}
	if err != nil {
		t.Fatalf("%s %s with %s as /: %v\n%s", name, strings.Join(args, " "), root, err, stderr.String())
	}
	if stderr.Len() > 0 {
		t.Logf("%s %s with %s as / (stderr):\n%s", name, strings.Join(args, " "), root, stderr.String())
	}
	return string(out)
}
