package store

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// gcServer is the collector's side of Nix 2.8's GC socket
// (<state>/gc-socket/socket) and the state it shares with the deleting
// loop: the hash parts of all temporary roots, and the hash part of the
// entry being deleted right now ("pending").
//
// A client writes "<absolute store path>\n" per root and waits for the
// byte '1' after each. The collector records the path's hash part as a
// temporary root and, if that is the pending one, answers only once
// the deletion is over, so that the client then finds the path invalid
// and installs it again rather than trusting a path that is being
// removed. Lines that are not store paths are answered too (Nix logs
// "received garbage instead of a root from client").
type gcServer struct {
	log      *logrus.Entry
	ln       *net.UnixListener
	rootsDir string // <state>/temproots

	mu        sync.Mutex
	wakeup    *sync.Cond
	tempRoots map[string]bool
	pending   string
	closed    bool
	conns     map[net.Conn]bool
	// acked holds, per client process, the state of its temporary
	// roots file when we last acknowledged a root, and the roots we
	// acknowledged (see awaitClients).
	acked map[int32]*ackedClient

	wg       sync.WaitGroup
	stopOnce sync.Once
}

// rootsFileState identifies a temporary roots file and its contents'
// last change. Inode numbers are reused at once, so a new file may have
// the old one's number: any difference in size or change time counts.
type rootsFileState struct {
	dev, ino uint64
	size     int64
	ctime    unix.Timespec
	exists   bool
}

// ackedClient is what awaitClients waits for from one client process.
type ackedClient struct {
	file  rootsFileState
	roots []string // absolute store paths, as the client sent them
}

// maxRootLine bounds a line from a client; store paths are far shorter.
const maxRootLine = 4096

// startGCServer creates the socket as Nix's createUnixDomainSocket does
// (an old socket file is unlinked, the new one is made mode 0666) and
// serves it until stop. The file is left in place afterwards, as Nix
// leaves it: a client that connects when no collector listens gets
// ECONNREFUSED and goes back to trying gc.lock.
func startGCServer(stateDir string, log *logrus.Entry) (*gcServer, error) {
	dir := filepath.Join(stateDir, "gc-socket")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("store: gc: creating %s: %w", dir, err)
	}
	sock := filepath.Join(dir, "socket")
	if err := os.Remove(sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("store: gc: removing old socket %s: %w", sock, err)
	}
	addr := sock
	if len(sock)+1 >= 108 { // sun_path; Nix forks and chdirs instead
		d, err := os.Open(dir)
		if err != nil {
			return nil, fmt.Errorf("store: gc: %w", err)
		}
		defer d.Close()
		addr = fmt.Sprintf("/proc/self/fd/%d/socket", d.Fd())
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: addr, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("store: gc: listening on %s: %w", sock, err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(sock, 0o666); err != nil {
		ln.Close()
		return nil, fmt.Errorf("store: gc: changing permissions on %s: %w", sock, err)
	}
	sv := &gcServer{log: log, ln: ln, rootsDir: filepath.Join(stateDir, "temproots"),
		tempRoots: map[string]bool{}, conns: map[net.Conn]bool{}, acked: map[int32]*ackedClient{}}
	sv.wakeup = sync.NewCond(&sv.mu)
	sv.wg.Add(1)
	go sv.accept()
	return sv, nil
}

func (sv *gcServer) accept() {
	defer sv.wg.Done()
	for {
		conn, err := sv.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				sv.log.Warnf("garbage collector socket: %v", err)
			}
			return
		}
		sv.mu.Lock()
		if sv.closed {
			sv.mu.Unlock()
			conn.Close()
			return
		}
		sv.conns[conn] = true
		sv.wg.Add(1)
		sv.mu.Unlock()
		go sv.serve(conn)
	}
}

func (sv *gcServer) serve(conn net.Conn) {
	defer sv.wg.Done()
	defer func() {
		sv.mu.Lock()
		delete(sv.conns, conn)
		sv.mu.Unlock()
		conn.Close()
	}()
	pid := peerPID(conn)
	r := bufio.NewReaderSize(conn, maxRootLine)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				sv.log.Warn("garbage collector socket: line too long from client; closing the connection")
			}
			return // EOF, a partial line or a closed connection: Nix stops reading too
		}
		path := string(line[:len(line)-1])
		if _, hash, ok := parseNixStorePath(path); ok {
			sv.log.Debugf("got new GC root '%s'", path)
			sv.addTempRootWait(hash)
			sv.noteAck(pid, path)
		} else {
			sv.log.Errorf("received garbage instead of a root from client: %q", path)
		}
		if _, err := conn.Write([]byte("1")); err != nil {
			return
		}
	}
}

// peerPID returns the process id of the client at the other end of a
// Unix socket (SO_PEERCRED), or 0.
func peerPID(conn net.Conn) int32 {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return 0
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0
	}
	var pid int32
	raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			pid = cred.Pid
		}
	})
	return pid
}

// statRootsFile describes <state>/temproots/<pid>.
func (sv *gcServer) statRootsFile(pid int32) rootsFileState {
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(sv.rootsDir, strconv.Itoa(int(pid))), &st); err != nil {
		return rootsFileState{}
	}
	return rootsFileState{dev: st.Dev, ino: st.Ino, size: st.Size, ctime: st.Ctim, exists: true}
}

// noteAck records root and the state of the client's roots file just
// before we acknowledge the root.
func (sv *gcServer) noteAck(pid int32, root string) {
	if pid <= 0 {
		return
	}
	st := sv.statRootsFile(pid)
	if !st.exists {
		return // not a roots file we can watch (another pid namespace?)
	}
	sv.mu.Lock()
	a := sv.acked[pid]
	if a == nil {
		a = &ackedClient{}
		sv.acked[pid] = a
	}
	a.file = st
	a.roots = append(a.roots, root)
	sv.mu.Unlock()
}

// recorded reports whether the roots file of pid already holds every one
// of roots.
func (sv *gcServer) recorded(pid int32, roots []string) bool {
	b, err := os.ReadFile(filepath.Join(sv.rootsDir, strconv.Itoa(int(pid))))
	if err != nil {
		return false
	}
	have := map[string]bool{}
	for _, r := range strings.Split(string(b), "\x00") {
		have[r] = true
	}
	for _, r := range roots {
		if !have[r] {
			return false
		}
	}
	return true
}

// awaitClients closes a race in the protocol. A client like Nix's
// addTempRoot appends a root to its roots file only after the collector
// has acknowledged it, without holding any lock. Were the collector to
// release gc.lock at once, the next collection could read that file
// before the append and miss the root, while the client, told its path
// is protected, goes on using it. So before gc.lock is released, every
// client we acknowledged roots to is given until the deadline to record
// them: until its roots file holds them all (our AddTempRoots writes
// them before it sends them, so they are there at once), has changed
// (grown; or been replaced or removed, and its roots with it), or the
// client has died. Clients append at once, so this costs next to nothing.
func (sv *gcServer) awaitClients(timeout time.Duration) {
	sv.mu.Lock()
	waiting := make(map[int32]rootsFileState, len(sv.acked))
	roots := make(map[int32][]string, len(sv.acked))
	for pid, a := range sv.acked {
		waiting[pid] = a.file
		roots[pid] = a.roots
	}
	sv.mu.Unlock()
	// Roots recorded now stay recorded until the file changes, which
	// the loop below sees: one look at the contents is enough.
	for pid := range waiting {
		if sv.recorded(pid, roots[pid]) {
			delete(waiting, pid)
		}
	}
	deadline := time.Now().Add(timeout)
	delay := 100 * time.Microsecond
	for len(waiting) > 0 {
		for pid, was := range waiting {
			now := sv.statRootsFile(pid)
			if now != was || errors.Is(unix.Kill(int(pid), 0), unix.ESRCH) {
				delete(waiting, pid)
			}
		}
		if len(waiting) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for pid, was := range waiting {
				sv.log.Warnf("process %d has not recorded the temporary roots it sent to the garbage collector in %s after %v (still %d bytes); going on",
					pid, filepath.Join(sv.rootsDir, strconv.Itoa(int(pid))), timeout, was.size)
			}
			return
		}
		time.Sleep(delay)
		delay = min(2*delay, 5*time.Millisecond)
	}
}

// addTempRoot records a temporary root read from a file.
func (sv *gcServer) addTempRoot(hash string) {
	sv.mu.Lock()
	sv.tempRoots[hash] = true
	sv.mu.Unlock()
}

// addTempRootWait records a root from the socket and returns once the
// path is not being deleted.
func (sv *gcServer) addTempRootWait(hash string) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	sv.tempRoots[hash] = true
	for sv.pending == hash && !sv.closed {
		sv.wakeup.Wait()
	}
}

// tempRootHashes returns a copy of the temporary roots so far.
func (sv *gcServer) tempRootHashes() map[string]bool {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	m := make(map[string]bool, len(sv.tempRoots))
	for h := range sv.tempRoots {
		m[h] = true
	}
	return m
}

// claim makes hash the pending path unless it is a temporary root; the
// check and the claim are one step, so a root that arrives afterwards
// waits for release.
func (sv *gcServer) claim(hash string) bool {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if sv.tempRoots[hash] {
		return false
	}
	sv.pending = hash
	return true
}

// release ends the pending deletion and wakes the clients waiting on it.
func (sv *gcServer) release() {
	sv.mu.Lock()
	sv.pending = ""
	sv.wakeup.Broadcast()
	sv.mu.Unlock()
}

// stopDrain is how long stop lets connections finish the lines their
// clients have already sent.
const stopDrain = 20 * time.Millisecond

// stop closes the socket, answers what clients have already sent
// (AddTempRoots sends a batch of lines before it reads the answers),
// then closes every connection and waits for the goroutines serving
// them. Roots received from now on need not be waited for: nothing is
// deleted any more. It may be called more than once.
func (sv *gcServer) stop() {
	sv.stopOnce.Do(func() {
		sv.mu.Lock()
		sv.closed = true
		sv.wakeup.Broadcast()
		conns := make([]net.Conn, 0, len(sv.conns))
		for c := range sv.conns {
			conns = append(conns, c)
		}
		sv.mu.Unlock()
		sv.ln.Close()
		for _, c := range conns {
			c.SetReadDeadline(time.Now().Add(stopDrain))
		}
		sv.wg.Wait()
	})
}
