package store

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/pkg/store/storefs"
	"github.com/storepkg/storepkg/pkg/storepath"
)

type rootFileType int

const (
	typeUnknown rootFileType = iota
	typeDir
	typeLink
	typeRegular
	typeOther
)

func fileTypeOf(m fs.FileMode) rootFileType {
	switch {
	case m.IsDir():
		return typeDir
	case m&fs.ModeSymlink != 0:
		return typeLink
	case m.IsRegular():
		return typeRegular
	}
	return typeOther
}

// addRoot records the store path of target as a root if target is in the
// store and names a store path (Nix's foundRoot: validity is checked
// later, against the database snapshot).
func (c *collector) addRoot(target string) {
	if base, ok := toStoreBase(target); ok {
		c.roots[base] = true
	}
}

// UnresolvedRoot is a possible root the collector could not read: it may
// keep any path, so a collection that finds one deletes no valid path.
type UnresolvedRoot struct {
	// Link is the file under gcroots or profiles, as a path on this
	// machine (<root>/nix/var/nix/gcroots/...).
	Link string
	// Target is the path Link names, with the store's root as "/"; empty
	// when Link itself (or the directory it is in) could not be read.
	Target string
	// Err says why: EACCES, ELOOP, or a top-level directory that is not
	// visible under the root (a mount the node agent lacks).
	Err error
}

func (u UnresolvedRoot) String() string {
	if u.Target == "" {
		return fmt.Sprintf("%s: %v", u.Link, u.Err)
	}
	return fmt.Sprintf("%s -> %s: %v", u.Link, u.Target, u.Err)
}

func (c *collector) unresolved(link, target string, err error) {
	u := UnresolvedRoot{Link: link, Target: target, Err: err}
	c.log.Warnf("cannot resolve potential root %s; keeping every valid path", u)
	c.res.Unresolved = append(c.res.Unresolved, u)
}

// findRoots is Nix 2.8's LocalStore::findRoots(path, type, roots), with
// indirect roots looked up inside the store's root, and never removed:
//   - directories are scanned recursively (a symlink to a directory is
//     not followed);
//   - a symlink whose text is a path in the store is a root;
//   - any other symlink may be an indirect root. Its target, made
//     absolute against the link's directory (with the store's root as
//     "/"), is looked up inside the root (inRootResolver): if it is
//     itself a symlink pointing into the store, that path is a root; if
//     it is certainly absent, or not a symlink, the link keeps nothing.
//     Nix also removes a link in gcroots/auto whose target is absent; we
//     never do: the link is not ours, and under a root other than "/"
//     "absent" is what we see, not necessarily what the machine has;
//   - a regular file named like a store path makes that path a root.
//
// Entries that vanish while we read them (ENOENT, ENOTDIR) are skipped.
// What cannot be read (EACCES; a target that cannot be looked up) is
// recorded as unresolved: Nix skips it, we keep every valid path.
func (c *collector) findRoots(path string, typ rootFileType) error {
	err := c.findRoots1(path, typ)
	switch {
	case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR):
		c.log.Debugf("cannot read potential root '%s': %v", path, err)
		return nil
	case errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM):
		c.unresolved(path, "", err)
		return nil
	}
	return err
}

func (c *collector) findRoots1(path string, typ rootFileType) error {
	if typ == typeUnknown {
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		typ = fileTypeOf(fi.Mode())
	}
	switch typ {
	case typeDir:
		entries, err := os.ReadDir(path)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := c.findRoots(filepath.Join(path, e.Name()), fileTypeOf(e.Type())); err != nil {
				return err
			}
		}
	case typeLink:
		target, err := os.Readlink(path)
		if err != nil {
			return err
		}
		if isInStore(target) {
			c.addRoot(target)
			return nil
		}
		c.indirectRoot(path, target)
	case typeRegular:
		if base, _, ok := parseNixStorePath(storepath.StoreDir + "/" + filepath.Base(path)); ok {
			c.roots[base] = true
		}
	}
	return nil
}

// indirectRoot follows the link at path (under the state directory),
// whose text target is not in the store, to the link it names.
func (c *collector) indirectRoot(path, target string) {
	logical := c.logicalTarget(path, target)
	r := inRootResolver{root: c.s.root, partial: c.s.root != "/"}
	kind, text, err := r.lstat(logical)
	switch {
	case err != nil:
		c.unresolved(path, logical, err)
	case kind == foundNothing:
		c.log.Debugf("link from '%s' to '%s' is stale (left for its owner)", path, logical)
	case kind == foundLink && isInStore(text):
		c.addRoot(text)
	}
}

// logicalTarget is the absolute, cleaned path, with the store's root as
// "/", that the link at path (a file under the root) names with target:
// a relative target is taken from the link's directory, and ".." stops
// at the root. One exception: Nix writes the links it makes inside a
// store under another root (gcroots/profiles) with their path on this
// machine, <root>/nix/...; such a target is read as /nix/....
func (c *collector) logicalTarget(path, target string) string {
	root := c.s.root
	if !filepath.IsAbs(target) {
		rel, err := filepath.Rel(root, filepath.Dir(path))
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			rel = "" // not under the root: cannot happen for the state directory
		}
		return filepath.Join("/", rel, target)
	}
	if root != "/" && strings.HasPrefix(target, root+"/nix/") {
		target = strings.TrimPrefix(target, root)
	}
	return filepath.Clean(target)
}

// readTempRoots is Nix 2.8's findTempRoots: every temproots/<pid> file
// whose owner is alive (it holds a write lock on it) contributes its
// NUL-terminated store paths. A file we can lock belongs to a dead
// process: it is removed (unlinked, then marked with a byte so that a
// process that has just opened it retries), except on a dry run.
func (c *collector) readTempRoots() error {
	dir := filepath.Join(c.s.stateDir, "temproots")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: gc: reading %s: %w", dir, err)
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue // hidden files keep the directory alive for some package managers
		}
		file := filepath.Join(dir, name)
		if _, err := strconv.Atoi(name); err != nil {
			// Nix would fail on it (std::stoi); it cannot be a live
			// process's file, so leave it alone.
			c.log.Warnf("ignoring %s: not a process's temporary roots file", file)
			continue
		}
		if err := c.readTempRootsFile(file); err != nil {
			return err
		}
	}
	return nil
}

func (c *collector) readTempRootsFile(file string) error {
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: gc: opening temporary roots file %s: %w", file, err)
	}
	defer f.Close()
	dead, err := storefs.TryLock(f, storefs.Exclusive)
	if err != nil {
		return fmt.Errorf("store: gc: %w", err)
	}
	if dead {
		if !c.opts.DryRun {
			c.log.Infof("removing stale temporary roots file '%s'", file)
			if err := removeStaleRootsFile(f, file); err != nil {
				return fmt.Errorf("store: gc: removing stale temporary roots file %s: %w", file, err)
			}
		}
		return nil
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("store: gc: reading temporary roots file %s: %w", file, err)
	}
	c.log.Debugf("reading temporary roots file '%s' (%d bytes)", file, len(b))
	for len(b) > 0 {
		i := strings.IndexByte(string(b), 0)
		if i < 0 {
			break // an incomplete record: Nix ignores it too
		}
		root := string(b[:i])
		b = b[i+1:]
		base, hash, ok := parseNixStorePath(root)
		if !ok {
			return fmt.Errorf("store: gc: temporary roots file %s: %q is not a store path", file, root)
		}
		c.roots[base] = true
		c.srv.addTempRoot(hash)
	}
	return nil
}

// removeStaleRootsFile removes the temporary roots file name, whose
// open descriptor f we have locked (so its owner is gone), and marks it
// with a byte as Nix does, so that a process that opened it just before
// and locks it after us sees it is stale.
//
// Nix unlinks by name. That is only safe if the name still refers to the
// file we locked, and in a process that closes its last Store and opens
// another (pkg/store removes temproots/<pid> on the last Close and
// creates it again on the next root) the name can meanwhile refer to a
// new, live file of the same process: unlinking it would hide that
// process's roots from every later collection. So the name is first
// renamed aside to a hidden name (hidden files are ignored by Nix's
// collector and ours), and deleted only if it is the file we locked;
// otherwise it is linked back (never over a newer file).
func removeStaleRootsFile(f *os.File, name string) error {
	var locked unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &locked); err != nil {
		return err
	}
	if locked.Nlink == 0 {
		return storefs.MarkStale(f) // its owner removed it already
	}
	aside := filepath.Join(filepath.Dir(name), fmt.Sprintf(".stale-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Rename(name, aside); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return storefs.MarkStale(f)
		}
		return err
	}
	var st unix.Stat_t
	if err := unix.Lstat(aside, &st); err != nil {
		return err
	}
	// (Comparing inode numbers is sound: ours is held open, so its
	// number cannot have been reused.)
	if st.Dev != locked.Dev || st.Ino != locked.Ino {
		// A new file of a live process: put it back, unless its owner
		// has made yet another one meanwhile (then this one is closed).
		if err := unix.Link(aside, name); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("restoring %s from %s: %w", name, aside, err)
		}
	}
	if err := os.Remove(aside); err != nil {
		return err
	}
	return storefs.MarkStale(f)
}

var (
	procMapsPath = regexp.MustCompile(`^\s*\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+(/\S+)\s*$`)
	procEnvPath  = regexp.MustCompile(regexp.QuoteMeta(storepath.StoreDir) + `/[0-9a-z]+[0-9a-zA-Z\+\-\._\?=]*`)
)

// ignorableProcErr reports the errors Nix ignores while scanning /proc:
// the process went away or is not ours to look at.
func ignorableProcErr(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.ESRCH)
}

// findRuntimeRoots is Nix 2.8's LocalStore::findRuntimeRoots on Linux:
// store paths that running processes use – their executable, working
// directory, open files, mapped files, and store paths in their
// environment – and the kernel's modprobe, fbsplash and poweroff_cmd
// helpers. Nix does this for any store, including one under another
// root (`local?root=DIR`): the paths are the logical /nix/store/… ones,
// checked for validity in this store's database. So do we.
func (c *collector) findRuntimeRoots() error {
	found := map[string]bool{}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil // as Nix: no /proc, no runtime roots
	}
	for _, p := range procs {
		pid := p.Name()
		if !isDigits(pid) {
			continue
		}
		for _, l := range []string{"exe", "cwd"} {
			if err := readProcLink("/proc/"+pid+"/"+l, found); err != nil {
				return err
			}
		}
		fdDir := "/proc/" + pid + "/fd"
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			if ignorableProcErr(err) {
				continue
			}
			return fmt.Errorf("store: gc: reading %s: %w", fdDir, err)
		}
		for _, fd := range fds {
			if !strings.HasPrefix(fd.Name(), ".") {
				if err := readProcLink(fdDir+"/"+fd.Name(), found); err != nil {
					return err
				}
			}
		}
		maps, err := os.ReadFile("/proc/" + pid + "/maps")
		if err != nil {
			if ignorableProcErr(err) {
				continue
			}
			return fmt.Errorf("store: gc: %w", err)
		}
		for _, line := range strings.Split(string(maps), "\n") {
			if !strings.Contains(line, storepath.StoreDir) {
				continue // cheap filter; the regexp decides
			}
			if m := procMapsPath.FindStringSubmatch(line); m != nil {
				found[m[1]] = true
			}
		}
		env, err := os.ReadFile("/proc/" + pid + "/environ")
		if err != nil {
			if ignorableProcErr(err) {
				continue
			}
			return fmt.Errorf("store: gc: %w", err)
		}
		for _, m := range procEnvPath.FindAllString(string(env), -1) {
			found[m] = true
		}
	}
	for _, f := range []string{"/proc/sys/kernel/modprobe", "/proc/sys/kernel/fbsplash", "/proc/sys/kernel/poweroff_cmd"} {
		b, err := os.ReadFile(f)
		if err != nil {
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EACCES) {
				continue
			}
			return fmt.Errorf("store: gc: %w", err)
		}
		found[string(b)] = true // as Nix: the text as it is, newline included
	}
	for target := range found {
		c.addRoot(target)
	}
	return nil
}

func readProcLink(file string, found map[string]bool) error {
	target, err := os.Readlink(file)
	if err != nil {
		if ignorableProcErr(err) {
			return nil
		}
		return fmt.Errorf("store: gc: reading symlink %s: %w", file, err)
	}
	if strings.HasPrefix(target, "/") {
		found[target] = true
	}
	return nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
