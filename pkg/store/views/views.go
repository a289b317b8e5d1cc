// Package views keeps the node's store views: one directory per closure,
// shared by every container on the node that runs that closure, that
// pkg/mount binds read-only at the container's /nix/store. Views are node
// store state next to the store they hard-link into, and like the store
// they are used from several processes at once (shims, `storepkg gc`, the
// node agent), so they take the store's lock files (pkg/store/storefs).
// The package needs no SQLite: the shim links it.
package views

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/pkg/store/storefs"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// A store view is one directory per closure, shared by every container
// on the node that runs that closure, mounted as the container's
// /nix/store with a single read-only bind (mount.BuildShared). It lives
// on the store's own filesystem, under <StoreRoot>/nix/var/storepkg/views:
//
//	<key>/store/<name>...   the closure: directories recreated, every
//	                        other entry a hard link to the store's inode;
//	                        a path of more than BindEntries entries is an
//	                        empty directory instead, which the container
//	                        binds the store's path over (View.Bound)
//	<key>/manifest          the boot it was built in, then the closure,
//	                        with each path's inode and birth time when the
//	                        view was built, and "bind" after a bound path
//	<key>/users/<id>        one symlink per container using the view,
//	                        pointing at its bundle (gone = dead user)
//	<key>.lock              flock held while building, acquiring, pruning
//	.build-<key>-<rand>/    a build in progress (or interrupted)
//	.old-<key>-<rand>/      a view retired while in use (the store path
//	                        behind it changed); removed when unused
//	.trash-<rand>/          a view being deleted
//
// Hard links share the store's inodes: no data is copied, modes, owners
// and mtimes are the store's, and the store's files stay what
// nix-store --verify checks. A view keeps its inodes alive after the
// store's garbage collector deletes their paths, so views that nothing
// uses must be pruned (Prune) for the space to come back.
//
// Linking costs a few syscalls per file (12-20 µs a file measured), once
// per closure and node; a bind costs one mount per container start. So
// a path of many files (a toolchain, a language's library) is not linked
// but bound, in the container's own mount namespace: the view's cost
// stays below BindEntries entries per path whatever the closure's file
// count, nothing is ever mounted on the host (no mount to leak, none to
// clean up after a crash), and a container has one mount per bound path,
// at most one per BindEntries files of its closure.
//
// A view is never synced to disk: it is rebuilt from the store, not a
// source of truth. A crash can leave a .build- directory (removed by the
// next build of its key, or Prune), or a renamed view whose manifest or
// links did not all reach the disk. So a view built in an earlier boot
// is never used: its first acquire in this boot rebuilds it.

// Dir is where the views live, relative to the store root.
const Dir = "nix/var/storepkg/views"

// BindEntries is the most entries (files, directories, links) a
// directory store path may have and still be linked into the view; a
// larger one is bound over it in the container (View.Bound). Measured
// here: a link costs 12-20 µs, once per closure and node; a bind mount
// in runc ~130 µs, at every container start. At 256, a bound path saves
// 3-5 ms of the view's first build, and a closure's view costs at most
// ~5 ms a path whatever its files. A variable so that tests can change it.
var BindEntries = 256

// ErrUnsupported: the views directory cannot hard-link to the store
// (another filesystem or mount, or links not permitted). Callers fall
// back to one bind mount per closure path (mount.Build).
var ErrUnsupported = errors.New("store views not supported here")

// User is a container using a view.
type User struct {
	// Name identifies the user among the view's users (the container ID).
	Name string
	// Alive is a directory that exists as long as the user does (the
	// container's bundle). A user whose Alive is gone (a shim that died
	// without releasing) no longer keeps the view.
	Alive string
}

// View is a built store view.
type View struct {
	Key      string        // identifies the closure: Key(closure)
	StoreDir string        // the directory to mount at /nix/store
	Built    bool          // this call built it
	Duration time.Duration // how long building took (when Built)
	Files    int           // entries linked while building (when Built)
	// Bound are the base names of the closure paths the view does not
	// link (more than BindEntries entries): each is an empty directory in
	// StoreDir that the container must bind <store>/<name> over,
	// read-only, nosuid, nodev (mount.BindStorePaths). Sorted.
	Bound []string
}

// Key names the view of a closure: a hash of its sorted base names.
func Key(closure []storepath.Path) string {
	names := baseNames(closure)
	h := sha256.New()
	for _, n := range names {
		io.WriteString(h, n)
		h.Write([]byte{'\n'})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

func baseNames(closure []storepath.Path) []string {
	names := make([]string, len(closure))
	for i, p := range closure {
		names[i] = p.Base()
	}
	slices.Sort(names)
	return slices.Compact(names)
}

func viewsDir(storeRoot string) string { return filepath.Join(storeRoot, Dir) }

// Ensure makes sure the view of closure exists and matches the store,
// building it if not, without registering a user: for building a view
// ahead of the first container (after a prefetch). Every closure path
// must be valid in the store under storeRoot.
func Ensure(ctx context.Context, storeRoot string, closure []storepath.Path) (*View, error) {
	return acquire(ctx, storeRoot, closure, nil)
}

// Acquire returns the view of closure, building it if it is missing
// or no longer matches the store, and registers user so that Prune
// keeps it until Release. Concurrent callers for the same closure,
// in any process, build it once.
func Acquire(ctx context.Context, storeRoot string, closure []storepath.Path, user User) (*View, error) {
	if err := checkName(user.Name); err != nil {
		return nil, err
	}
	return acquire(ctx, storeRoot, closure, &user)
}

// Release unregisters user from the view key (also from a retired
// copy of it). Releasing an unknown user is not an error.
func Release(storeRoot, key, user string) error {
	if err := checkName(user); err != nil {
		return err
	}
	dir := viewsDir(storeRoot)
	dirs := []string{filepath.Join(dir, key)}
	old, _ := filepath.Glob(filepath.Join(dir, ".old-"+key+"-*"))
	dirs = append(dirs, old...)
	for _, d := range dirs {
		if err := os.Remove(filepath.Join(d, "users", user)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("view: releasing %s: %w", key, err)
		}
	}
	return nil
}

func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("view: invalid user name %q", name)
	}
	return nil
}

func acquire(ctx context.Context, storeRoot string, closure []storepath.Path, user *User) (*View, error) {
	if len(closure) == 0 {
		return nil, errors.New("view: empty closure")
	}
	dir := viewsDir(storeRoot)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("view: %w", err)
	}
	names := baseNames(closure)
	key := Key(closure)
	lock, err := lockView(ctx, dir, key, true)
	if err != nil {
		return nil, err
	}
	defer lock.Release()

	hostStore := filepath.Join(storeRoot, storepath.StoreDir)
	v := &View{Key: key, StoreDir: filepath.Join(dir, key, "store")}
	current := filepath.Join(dir, key)
	bound, ok, err := viewMatches(current, hostStore, names)
	if err != nil {
		return nil, err
	}
	v.Bound = bound
	if !ok {
		if err := retire(dir, key); err != nil {
			return nil, err
		}
		if err := removeBuilds(dir, key); err != nil {
			return nil, err
		}
		start := time.Now()
		n, bound, err := build(ctx, dir, key, hostStore, names)
		if err != nil {
			return nil, err
		}
		v.Built, v.Duration, v.Files, v.Bound = true, time.Since(start), n, bound
	}
	if user != nil {
		link := filepath.Join(current, "users", user.Name)
		os.Remove(link)
		if err := os.Symlink(user.Alive, link); err != nil {
			return nil, fmt.Errorf("view: registering %s: %w", user.Name, err)
		}
	}
	return v, nil
}

// viewMatches reports whether the view at dir holds exactly names and
// every one of them is still the same file in the store (same inode and
// birth time): a path deleted and substituted again, or repaired by
// nix-store, is a new inode, and the view must not show the old one.
// It returns the view's bound paths with it.
func viewMatches(dir, hostStore string, names []string) (bound []string, ok bool, err error) {
	boot, m, err := readManifest(filepath.Join(dir, "manifest"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil || boot != bootID() || len(m) != len(names) {
		return nil, false, nil
	}
	sd, err := unix.Open(hostStore, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false, fmt.Errorf("view: %w", &fs.PathError{Op: "open", Path: hostStore, Err: err})
	}
	defer unix.Close(sd)
	for i, e := range m {
		if e.name != names[i] {
			return nil, false, nil
		}
		id, err := identify(sd, e.name)
		if err != nil || id != e.id {
			return nil, false, nil
		}
		if e.bound {
			bound = append(bound, e.name)
		}
	}
	return bound, true, nil
}

type fileID struct {
	ino   uint64
	btime int64 // ns since the epoch; 0 where the filesystem has none
}

type manifestEntry struct {
	name  string
	id    fileID
	bound bool // not linked: the container binds the store's path
}

func identify(dirfd int, name string) (fileID, error) {
	var stx unix.Statx_t
	if err := unix.Statx(dirfd, name, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_DONT_SYNC, unix.STATX_INO|unix.STATX_BTIME, &stx); err != nil {
		return fileID{}, err
	}
	id := fileID{ino: stx.Ino}
	if stx.Mask&unix.STATX_BTIME != 0 {
		id.btime = stx.Btime.Sec*1e9 + int64(stx.Btime.Nsec)
	}
	return id, nil
}

// bootID identifies this boot of the machine; a test replaces it to
// simulate a reboot.
var bootID = sync.OnceValue(func() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		// Without /proc, every manifest matches on this: a degraded
		// check rather than a view rebuilt on every acquire.
		return "unknown"
	}
	return strings.TrimSpace(string(b))
})

// readManifest returns the boot a view was built in and its entries.
func readManifest(file string) (boot string, entries []manifestEntry, err error) {
	f, err := os.Open(file)
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(bufio.NewReaderSize(f, 1<<16))
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return "", nil, err
		}
		return "", nil, fmt.Errorf("view: manifest %s is empty", file)
	}
	header := strings.Fields(sc.Text())
	if len(header) != 2 || header[0] != "boot" {
		return "", nil, fmt.Errorf("view: bad manifest header %q in %s", sc.Text(), file)
	}
	boot = header[1]
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		bound := len(fields) == 4 && fields[3] == "bind"
		if len(fields) != 3 && !bound {
			return "", nil, fmt.Errorf("view: bad manifest line %q in %s", sc.Text(), file)
		}
		ino, err1 := strconv.ParseUint(fields[1], 10, 64)
		bt, err2 := strconv.ParseInt(fields[2], 10, 64)
		if err1 != nil || err2 != nil {
			return "", nil, fmt.Errorf("view: bad manifest line %q in %s", sc.Text(), file)
		}
		entries = append(entries, manifestEntry{fields[0], fileID{ino, bt}, bound})
	}
	return boot, entries, sc.Err()
}

// build creates the view of names under a temporary name and renames it
// to key, returning the entries it linked and the paths it left to bind.
// The caller holds key's lock and has removed what was there.
func build(ctx context.Context, dir, key, hostStore string, names []string) (n int, bound []string, err error) {
	tmp := filepath.Join(dir, fmt.Sprintf(".build-%s-%s", key, randomSuffix()))
	defer func() {
		if err != nil {
			removeTree(tmp)
		}
	}()
	viewStore := filepath.Join(tmp, "store")
	for _, d := range []string{tmp, viewStore, filepath.Join(tmp, "users")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return 0, nil, fmt.Errorf("view: %w", err)
		}
	}
	sd, err := unix.Open(hostStore, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, nil, fmt.Errorf("view: %w", &fs.PathError{Op: "open", Path: hostStore, Err: err})
	}
	defer unix.Close(sd)
	var manifest strings.Builder
	fmt.Fprintf(&manifest, "boot %s\n", bootID())
	var link []string
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return 0, nil, fmt.Errorf("view: building %s: %w", key, err)
		}
		id, err := identify(sd, name)
		if err != nil {
			return 0, nil, fmt.Errorf("view: closure path %s/%s: %w", storepath.StoreDir, name, err)
		}
		many, err := manyEntries(filepath.Join(hostStore, name), BindEntries)
		if err != nil {
			return 0, nil, err
		}
		if !many {
			link = append(link, name)
			fmt.Fprintf(&manifest, "%s %d %d\n", name, id.ino, id.btime)
			continue
		}
		// The mount point; its mode does not show once bound over.
		dst := filepath.Join(viewStore, name)
		if err := unix.Mkdir(dst, 0o555); err != nil {
			return 0, nil, fmt.Errorf("view: %w", &fs.PathError{Op: "mkdir", Path: dst, Err: err})
		}
		bound = append(bound, name)
		fmt.Fprintf(&manifest, "%s %d %d bind\n", name, id.ino, id.btime)
	}
	if n, err = linkPaths(ctx, key, hostStore, viewStore, link); err != nil {
		return 0, nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, "manifest"), []byte(manifest.String()), 0o644); err != nil {
		return 0, nil, fmt.Errorf("view: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, key)); err != nil {
		return 0, nil, fmt.Errorf("view: %w", err)
	}
	return n, bound, nil
}

// linkPaths replicates the store paths names into viewStore, a path at a
// time on each of up to GOMAXPROCS threads: linking is syscalls on
// distinct directories, so the threads hardly contend. It returns the
// entries linked.
func linkPaths(ctx context.Context, key, hostStore, viewStore string, names []string) (int, error) {
	var (
		mu       sync.Mutex
		next     int
		files    int
		firstErr error
		wg       sync.WaitGroup
	)
	workers := min(runtime.GOMAXPROCS(0), len(names), 8)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := &linker{}
			for {
				mu.Lock()
				if firstErr == nil && ctx.Err() != nil {
					firstErr = fmt.Errorf("view: building %s: %w", key, ctx.Err())
				}
				if firstErr != nil || next == len(names) {
					files += l.files
					mu.Unlock()
					return
				}
				name := names[next]
				next++
				mu.Unlock()
				if err := l.replicate(filepath.Join(hostStore, name), filepath.Join(viewStore, name)); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return files, firstErr
}

// manyEntries reports whether the store path at p is a directory of more
// than limit entries, reading directories only (no stat, no link) and
// no further than limit entries.
func manyEntries(p string, limit int) (bool, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return false, fmt.Errorf("view: %w", &fs.PathError{Op: "lstat", Path: p, Err: err})
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false, nil
	}
	n := 0
	var walk func(dir string) (bool, error)
	walk = func(dir string) (bool, error) {
		f, err := os.Open(dir)
		if err != nil {
			return false, fmt.Errorf("view: %w", err)
		}
		defer f.Close()
		for {
			entries, err := f.ReadDir(256)
			for _, e := range entries {
				if n++; n > limit {
					return true, nil
				}
				if e.IsDir() {
					if many, err := walk(dir + "/" + e.Name()); many || err != nil {
						return many, err
					}
				}
			}
			if errors.Is(err, io.EOF) {
				return false, nil
			}
			if err != nil {
				return false, fmt.Errorf("view: %w", err)
			}
		}
	}
	return walk(p)
}

// linker recreates store trees: directories anew with the store's mode
// and times, everything else hard-linked.
type linker struct {
	files int
}

func (l *linker) replicate(src, dst string) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return fmt.Errorf("view: %w", &fs.PathError{Op: "lstat", Path: src, Err: err})
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return l.dir(src, dst, &st)
	}
	return l.link(src, dst, &st)
}

func (l *linker) dir(src, dst string, st *unix.Stat_t) error {
	if err := unix.Mkdir(dst, 0o700); err != nil {
		return fmt.Errorf("view: %w", &fs.PathError{Op: "mkdir", Path: dst, Err: err})
	}
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("view: %w", err)
	}
	entries, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("view: %w", err)
	}
	for _, e := range entries {
		s, d := src+"/"+e.Name(), dst+"/"+e.Name()
		if e.IsDir() {
			var cst unix.Stat_t
			if err := unix.Lstat(s, &cst); err != nil {
				return fmt.Errorf("view: %w", &fs.PathError{Op: "lstat", Path: s, Err: err})
			}
			err = l.dir(s, d, &cst)
		} else {
			err = l.link(s, d, nil)
		}
		if err != nil {
			return err
		}
	}
	if err := unix.Chmod(dst, st.Mode&0o7777); err != nil {
		return fmt.Errorf("view: %w", &fs.PathError{Op: "chmod", Path: dst, Err: err})
	}
	if err := unix.UtimesNano(dst, []unix.Timespec{st.Atim, st.Mtim}); err != nil {
		return fmt.Errorf("view: %w", &fs.PathError{Op: "utimes", Path: dst, Err: err})
	}
	return nil
}

// link hard-links src at dst. A file at its filesystem's link limit
// (Nix's optimiser links identical files, empty ones by the thousand) is
// copied instead, with its mode and times.
func (l *linker) link(src, dst string, st *unix.Stat_t) error {
	err := unix.Link(src, dst)
	switch {
	case err == nil:
		l.files++
		return nil
	case errors.Is(err, unix.EXDEV), errors.Is(err, unix.EPERM):
		return fmt.Errorf("view: linking %s: %w (%w)", src, ErrUnsupported, err)
	case errors.Is(err, unix.EMLINK):
		l.files++
		return copyEntry(src, dst, st)
	}
	return fmt.Errorf("view: %w", &os.LinkError{Op: "link", Old: src, New: dst, Err: err})
}

func copyEntry(src, dst string, st *unix.Stat_t) error {
	if st == nil {
		st = new(unix.Stat_t)
		if err := unix.Lstat(src, st); err != nil {
			return fmt.Errorf("view: %w", &fs.PathError{Op: "lstat", Path: src, Err: err})
		}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		target, err := os.Readlink(src)
		if err != nil {
			return fmt.Errorf("view: %w", err)
		}
		if err := os.Symlink(target, dst); err != nil {
			return fmt.Errorf("view: %w", err)
		}
	case unix.S_IFREG:
		in, err := os.Open(src)
		if err != nil {
			return fmt.Errorf("view: %w", err)
		}
		defer in.Close()
		out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("view: %w", err)
		}
		_, err = io.Copy(out, in)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("view: copying %s: %w", src, err)
		}
		if err := unix.Chmod(dst, st.Mode&0o7777); err != nil {
			return fmt.Errorf("view: %w", &fs.PathError{Op: "chmod", Path: dst, Err: err})
		}
	default:
		return fmt.Errorf("view: %s: cannot link (too many links) or copy a %o", src, st.Mode&unix.S_IFMT)
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, dst, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("view: %w", &fs.PathError{Op: "utimes", Path: dst, Err: err})
	}
	return nil
}

// retire moves the current view of key out of the way: deleted when no
// live container uses it, renamed to .old-<key>-* otherwise (its mounts
// in running containers are unaffected by the rename).
func retire(dir, key string) error {
	cur := filepath.Join(dir, key)
	if _, err := os.Lstat(cur); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if len(liveUsers(cur)) > 0 {
		if err := os.Rename(cur, filepath.Join(dir, fmt.Sprintf(".old-%s-%s", key, randomSuffix()))); err != nil {
			return fmt.Errorf("view: %w", err)
		}
		return nil
	}
	_, err := deleteView(dir, cur)
	return err
}

// removeBuilds deletes interrupted builds of key; the caller holds its lock.
func removeBuilds(dir, key string) error {
	left, _ := filepath.Glob(filepath.Join(dir, ".build-"+key+"-*"))
	for _, p := range left {
		if _, err := deleteView(dir, p); err != nil {
			return err
		}
	}
	return nil
}

// liveUsers lists the users of the view at dir whose Alive directory
// still exists, removing the entries of dead ones.
func liveUsers(dir string) []string {
	users := filepath.Join(dir, "users")
	entries, err := os.ReadDir(users)
	if err != nil {
		return nil
	}
	var live []string
	for _, e := range entries {
		p := filepath.Join(users, e.Name())
		target, err := os.Readlink(p)
		if err == nil {
			if fi, err := os.Stat(target); err == nil && fi.IsDir() {
				live = append(live, e.Name())
				continue
			}
		}
		os.Remove(p)
	}
	return live
}

// deleteView renames p to a trash name, so that a half-deleted view is
// never taken for a whole one, and deletes it. It returns the bytes
// freed: the sizes of files whose last link it removed.
func deleteView(dir, p string) (uint64, error) {
	trash := filepath.Join(dir, ".trash-"+randomSuffix())
	if err := os.Rename(p, trash); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, nil
		}
		return 0, fmt.Errorf("view: %w", err)
	}
	return removeTree(trash)
}

// removeTree deletes a view tree (storefs.RemoveTree), counting the
// bytes of files whose last link goes.
func removeTree(root string) (uint64, error) {
	freed, err := storefs.RemoveTree(root, lastLinkBlocks)
	if err != nil {
		return freed, fmt.Errorf("view: removing %s: %w", root, err)
	}
	return freed, nil
}

// lastLinkBlocks is what removing a view's file frees: its allocated
// blocks when it is a regular file whose last link goes (the store
// deleted its own link already); nothing while the store still has it.
func lastLinkBlocks(st *unix.Stat_t) uint64 {
	if st.Nlink == 1 && st.Mode&unix.S_IFMT == unix.S_IFREG {
		return uint64(st.Blocks) * 512
	}
	return 0
}

func randomSuffix() string {
	return strconv.Itoa(os.Getpid()) + "-" + strconv.FormatUint(rand.Uint64()>>24, 36)
}

// lockView takes key's lock (storefs.Acquire), waiting with block;
// otherwise a lock held elsewhere returns nil, nil. A pruner that removes
// a view deletes its lock file too (storefs.Lock.Delete).
func lockView(ctx context.Context, dir, key string, block bool) (*storefs.Lock, error) {
	l, ok, err := storefs.Acquire(ctx, filepath.Join(dir, key+".lock"), block)
	if err != nil {
		return nil, fmt.Errorf("view: %w", err)
	}
	if !ok {
		return nil, nil
	}
	return l, nil
}
