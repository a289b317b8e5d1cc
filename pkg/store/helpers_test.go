package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/storepkg/storepkg/internal/nixtest"
	"github.com/storepkg/storepkg/pkg/nixbase32"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// needNix skips the test when nix-store is missing, unless CI is set: in
// CI a missing Nix must fail loudly rather than hide the interop tests.
func needNix(t *testing.T) {
	t.Helper()
	nixtest.Require(t, "nix", "nix-store")
}

// nixCmd builds a real-Nix command against the store under root, run
// with the project's Nix configuration (nixtest.Env) plus env.
func nixCmd(ctx context.Context, root string, env []string, args ...string) *exec.Cmd {
	cmd := nixtest.CommandContext(ctx, "nix-store", append([]string{"--store", nixtest.StoreURI(root)}, args...)...)
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// nixStore runs nix-store against the store under root and returns
// stdout; it fails the test on a non-zero exit.
func nixStore(t *testing.T, root string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := nixCmd(ctx, root, nil, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("nix-store %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	if stderr.Len() > 0 {
		t.Logf("nix-store %s (stderr):\n%s", strings.Join(args, " "), stderr.String())
	}
	return stdout.String()
}

// fakePath makes a well-formed store path with a random hash part. Nix
// never recomputes a path's hash from its contents (--verify compares
// contents with the registered NarHash only), so hand-made paths work.
func fakePath(t testing.TB, name string) storepath.Path {
	t.Helper()
	var b [20]byte
	rand.Read(b[:])
	p, err := storepath.ParseBase(nixbase32.EncodeToString(b[:]) + "-" + name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// treeEntry describes one file of a hand-made store path; dirs are
// implied by the paths. An empty name stands for a top-level regular
// file instead of a directory.
type treeEntry struct {
	name, content string
	exec          bool
}

// writeTree creates a canonical store tree at dir (files 0444 or 0555,
// directories 0555, mtime 1 everywhere), as Nix would leave it.
func writeTree(t *testing.T, dir string, entries []treeEntry) {
	t.Helper()
	if len(entries) == 1 && entries[0].name == "" {
		writeFile(t, dir, entries[0])
		canonicalise(t, dir)
		return
	}
	for _, e := range entries {
		f := filepath.Join(dir, e.name)
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, f, e)
	}
	canonicalise(t, dir)
}

func writeFile(t *testing.T, f string, e treeEntry) {
	t.Helper()
	mode := os.FileMode(0o644)
	if e.exec {
		mode = 0o755
	}
	if err := os.WriteFile(f, []byte(e.content), mode); err != nil {
		t.Fatal(err)
	}
}

func canonicalise(t *testing.T, top string) {
	t.Helper()
	var all []string
	filepath.Walk(top, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, p)
		return nil
	})
	// Deepest first, so directories lose write permission last.
	sort.Sort(sort.Reverse(sort.StringSlice(all)))
	epoch1 := time.Unix(1, 0)
	for _, p := range all {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o444)
		if fi.IsDir() || fi.Mode()&0o100 != 0 {
			mode = 0o555
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, epoch1, epoch1); err != nil {
			t.Fatal(err)
		}
	}
}

// narOf serialises dir with real Nix and returns the NAR's SHA-256 and
// size, the values a binary cache would give us.
func narOf(t *testing.T, dir string) ([32]byte, uint64) {
	t.Helper()
	out, err := nixtest.Cmd("nix-store", "--dump", dir).Output()
	if err != nil {
		t.Fatalf("nix-store --dump %s: %v", dir, err)
	}
	return sha256.Sum256(out), uint64(len(out))
}

func openStore(t testing.TB, root string) *Store {
	t.Helper()
	s, err := Open(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func absAll(paths []storepath.Path) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = p.Absolute()
	}
	return out
}

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	sort.Strings(out)
	return out
}
