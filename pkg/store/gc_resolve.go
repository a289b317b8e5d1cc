package store

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// An indirect root is a link, such as gcroots/auto/<hash>, to a link
// somewhere on the machine (a user's ./result, NixOS's
// /run/booted-system) that points into the store. The store's root is
// where that machine's / is: the node agent runs in a container with the
// host's / seen at /host, so /home/u/result means <root>/home/u/result,
// and looking it up in the agent's own filesystem finds nothing or
// something else. inRootResolver looks up such paths inside the root,
// as openat2's RESOLVE_IN_ROOT does: symbolic links are followed relative
// to the root (an absolute link restarts at the root) and ".." never
// climbs above it. The walk holds a descriptor of every directory it
// passes, so a link changed meanwhile cannot lead it out either.
type inRootResolver struct {
	root string // absolute, cleaned
	// partial: the root is a directory other than "/", so it may have
	// been assembled from mounts of some of the machine's top-level
	// directories (the agent's /host/nix, /host/home, ...): a name
	// missing directly under it may just not be mounted.
	partial bool
}

// maxLinks bounds the links one lookup follows, as the kernel's
// MAXSYMLINKS.
const maxLinks = 40

// lookupKind is what a lookup found at the path's last component.
type lookupKind int

const (
	// foundLink: a symbolic link (not followed); text is its content.
	foundLink lookupKind = iota
	// foundOther: something that is not a symbolic link.
	foundOther
	// foundNothing: certainly absent: a directory we could read has no
	// such entry, or a component is not a directory.
	foundNothing
)

// errNotVisible is wrapped when a lookup cannot tell whether the path
// exists: a top-level directory of the machine is missing under a root
// other than "/" (it may just not be mounted there).
var errNotVisible = errors.New("not visible under the store's root")

// lstat looks up the absolute, cleaned path p inside the root without
// following a link at its last component, as lstat(2) with the root as
// "/". An error means the lookup could not tell what is there: p cannot
// be read (EACCES, ELOOP, EIO, ...), or errNotVisible.
func (r *inRootResolver) lstat(p string) (kind lookupKind, text string, err error) {
	rootFD, err := unix.Open(r.root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, "", fmt.Errorf("opening %s: %w", r.root, err)
	}
	// stack holds the directories from the root down to the current one;
	// ".." pops, never below the root.
	stack := []int{rootFD}
	defer func() {
		for _, fd := range stack {
			unix.Close(fd)
		}
	}()
	comps := splitPath(p)
	links := 0
	for len(comps) > 0 {
		name := comps[0]
		comps = comps[1:]
		if name == ".." {
			if len(stack) > 1 {
				unix.Close(stack[len(stack)-1])
				stack = stack[:len(stack)-1]
			}
			continue
		}
		last := len(comps) == 0
		fd, err := unix.Openat(stack[len(stack)-1], name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			if r.partial && len(stack) == 1 {
				return 0, "", fmt.Errorf("/%s: %w %s", name, errNotVisible, r.root)
			}
			return foundNothing, "", nil
		}
		if err != nil {
			return 0, "", err
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return 0, "", err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			t, err := readlinkFD(fd)
			unix.Close(fd)
			if err != nil {
				return 0, "", err
			}
			if last {
				return foundLink, t, nil
			}
			if links++; links > maxLinks {
				return 0, "", unix.ELOOP
			}
			if strings.HasPrefix(t, "/") {
				for _, d := range stack[1:] {
					unix.Close(d)
				}
				stack = stack[:1]
			}
			comps = append(splitPath(t), comps...)
		case unix.S_IFDIR:
			if last {
				unix.Close(fd)
				return foundOther, "", nil
			}
			stack = append(stack, fd)
		default:
			unix.Close(fd)
			if last {
				return foundOther, "", nil
			}
			return foundNothing, "", nil // ENOTDIR: nothing can be below a file
		}
	}
	return foundOther, "", nil // the path ends at a directory (the root, or after "..")
}

// splitPath splits a path into its names, leaving out empty ones and ".".
func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// readlinkFD reads the link that fd (opened O_PATH|O_NOFOLLOW) is.
func readlinkFD(fd int) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}
