// Package fetchexec runs a closure substitution in a child process,
// `storepkg fetch --json`, and reads what it reports.
//
// The shim runs once per pod and lives as long as the pod; the fetcher,
// its decoders and the store's SQLite database are needed for the seconds
// a closure takes to become valid. Running them in a short-lived child
// keeps their code pages and the fetch's peak heap out of every pod's
// shim, the way containerd rather than the runc shim pulls images.
//
// The child reports on stdout in pkg/fetchapi's JSON lines; its stderr is
// its log. This package knows nothing of the fetcher or the store: it is
// the shim's side, the child's command line and the reading of its
// reports.
package fetchexec

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/fetchslot"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// checkResult refuses a result naming anything but store paths: the
// shim mounts what it names.
func checkResult(res *fetchapi.Result) error {
	for _, list := range [][]storepath.Path{res.Closure, res.Fetched} {
		for _, p := range list {
			if _, err := storepath.ParseBase(string(p)); err != nil {
				return err
			}
		}
	}
	if len(res.Closure) == 0 {
		return errors.New("empty closure")
	}
	return nil
}

// GCRoot is a permanent GC root the child makes before it downloads
// anything: gcroots/storepkg/<Name> -> Path.
type GCRoot struct {
	Name string
	Path storepath.Path
}

// Request is one substitution.
type Request struct {
	Binary            string // the storepkg CLI
	StoreRoot         string // the store is <StoreRoot>/nix/store
	Substituters      []string
	TrustedPublicKeys []string
	NetrcFile         string
	// PeersFile is the node's peers file (pkg/peer), passed as --peers:
	// the child takes paths from the node's peers; "": none.
	PeersFile  string
	MaxJobs    int           // parallel NAR downloads; 0: the child's default
	MaxLookups int           // parallel narinfo requests; 0: the child's default
	Timeout    time.Duration // the child's own deadline; 0: none
	// MaxNarBytes and MaxPaths bound the NAR bytes (signed NarSize) and
	// the paths the child may substitute, checked before it downloads
	// anything (fetchapi.KindTooLarge); 0: no bound.
	MaxNarBytes int64
	MaxPaths    int
	// CountWith: paths whose closures count against MaxNarBytes and
	// MaxPaths with Paths', not fetched (the pod's other path lists).
	CountWith []storepath.Path
	Paths     []storepath.Path
	GCRoots   []GCRoot

	// Slots, if set, is the node's bound on concurrent fetches: the
	// child downloads only while it holds one of them (pkg/fetchslot).
	Slots *Slots
	// MaxProcs and MemoryLimit are the child's GOMAXPROCS and GOMEMLIMIT
	// (Go's syntax, e.g. "512MiB"); 0 and "": Go's defaults.
	MaxProcs    int
	MemoryLimit string

	Progress func(fetchapi.Progress) // called for each progress report
	Waiting  func(fetchapi.Waiting)  // called when the fetch waits for a slot
	Log      func(string)            // called for each line the child logs

	// Start starts the child and returns how to wait for its exit, for a
	// caller that reaps its children itself (containerd's shim reaper
	// would otherwise take the exit status from os/exec). nil: os/exec.
	Start func(*exec.Cmd) (wait func() error, err error)
}

// Slots names the node's fetch slots: N of them under Dir.
type Slots struct {
	Dir string
	N   int
}

// Args is the child's command line after the binary. The caches are
// not on it: they go to the child's stdin (CacheConfig), since a
// substituter URL may carry a password and every process on the node
// can read /proc/PID/cmdline.
func (r Request) Args() []string {
	args := []string{"fetch", "--json", "--root", r.StoreRoot, "--cache-config", "-"}
	if r.PeersFile != "" {
		args = append(args, "--peers", r.PeersFile)
	}
	if r.MaxJobs > 0 {
		args = append(args, "--max-jobs", strconv.Itoa(r.MaxJobs))
	}
	if r.MaxLookups > 0 {
		args = append(args, "--max-lookups", strconv.Itoa(r.MaxLookups))
	}
	if r.Timeout > 0 {
		args = append(args, "--timeout", r.Timeout.String())
	}
	if r.MaxNarBytes > 0 {
		args = append(args, "--max-nar-bytes", strconv.FormatInt(r.MaxNarBytes, 10))
	}
	if r.MaxPaths > 0 {
		args = append(args, "--max-paths", strconv.Itoa(r.MaxPaths))
	}
	if r.MaxNarBytes > 0 || r.MaxPaths > 0 {
		for _, p := range r.CountWith {
			args = append(args, "--count-with", p.Absolute())
		}
	}
	for _, g := range r.GCRoots {
		args = append(args, "--gc-root", g.Name+"="+g.Path.Absolute())
	}
	args = append(args, "--")
	for _, p := range r.Paths {
		args = append(args, p.Absolute())
	}
	return args
}

// CacheConfig is what the child reads on its stdin.
func (r Request) CacheConfig() fetchapi.CacheConfig {
	return fetchapi.CacheConfig{Substituters: r.Substituters, TrustedPublicKeys: r.TrustedPublicKeys, NetrcFile: r.NetrcFile}
}

// Env is the child's environment: the caller's, with the Go runtime's
// bounds.
func (r Request) Env() []string {
	if r.MaxProcs <= 0 && r.MemoryLimit == "" {
		return nil // inherited
	}
	env := os.Environ()
	if r.MaxProcs > 0 {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(r.MaxProcs))
	}
	if r.MemoryLimit != "" {
		env = append(env, "GOMEMLIMIT="+r.MemoryLimit)
	}
	return env
}

// stopGrace is how long a cancelled child has to stop after SIGTERM (it
// removes what it was installing) before it is killed.
const stopGrace = 10 * time.Second

// slotFD is where the child finds the slot it inherits (ExtraFiles[0]).
const slotFD = 3

// Run starts the child and waits for its result. A cancelled ctx sends
// the child SIGTERM; the child also gets SIGTERM if this process dies.
// The error is a *fetchapi.Failure when the child reported one.
//
// With Slots, the child starts once this process holds a slot, which
// the child inherits and holds until it exits: a fetch that waits costs
// this process a goroutine, not a child process. When no slot is free,
// a first child checks without a slot whether the closure is already
// valid (and makes the GC roots): a pod on a closure the node has
// starts without waiting behind downloads.
func Run(ctx context.Context, r Request) (*fetchapi.Result, error) {
	if r.Binary == "" {
		return nil, errors.New("fetchexec: no storepkg binary given")
	}
	if r.Slots == nil {
		res, _, err := run(ctx, r, nil, nil)
		return res, err
	}
	slot, ok, err := fetchslot.TryAcquire(r.Slots.Dir, r.Slots.N)
	if err != nil {
		return nil, &fetchapi.Failure{Kind: fetchapi.KindOther, Message: fmt.Sprintf("the node's fetch slots: %v", err)}
	}
	if !ok {
		res, needsFetch, err := run(ctx, r, []string{"--only-if-valid"}, nil)
		if err != nil || !needsFetch {
			return res, err
		}
		slot, err = fetchslot.Acquire(ctx, r.Slots.Dir, r.Slots.N, func() {
			if r.Waiting != nil {
				r.Waiting(fetchapi.Waiting{Slots: r.Slots.N})
			}
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil, canceled(ctx, r)
			}
			return nil, &fetchapi.Failure{Kind: fetchapi.KindOther, Message: fmt.Sprintf("the node's fetch slots: %v", err)}
		}
	}
	defer slot.Release()
	res, _, err := run(ctx, r, []string{"--slot-fd", strconv.Itoa(slotFD)}, slot.File())
	return res, err
}

// canceled is the failure of a fetch whose ctx ended.
func canceled(ctx context.Context, r Request) error {
	kind := fetchapi.KindCanceled
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		kind = fetchapi.KindTimeout
	}
	return &fetchapi.Failure{Kind: kind, Message: fmt.Sprintf("substituting %s: %v", storepath.Describe(r.Paths), ctx.Err())}
}

// run runs one child with extra flags (before the paths), handing it
// slot; needsFetch reports the child's needsFetch line.
func run(ctx context.Context, r Request, extra []string, slot *os.File) (res *fetchapi.Result, needsFetch bool, _ error) {
	args := r.Args()
	if len(extra) > 0 {
		end := slices.Index(args, "--")
		args = slices.Concat(args[:end], extra, args[end:])
	}
	cfg, err := json.Marshal(r.CacheConfig())
	if err != nil {
		return nil, false, err
	}
	cmd := exec.CommandContext(ctx, r.Binary, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = stopGrace
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	cmd.Env = r.Env()
	if slot != nil {
		cmd.ExtraFiles = []*os.File{slot}
	}
	// Our own pipes, not StdoutPipe: the wait may return (a reaper's)
	// before the last report is read, and must not close them.
	stdin, inW, err := os.Pipe()
	if err != nil {
		return nil, false, err
	}
	defer inW.Close()
	stdout, outW, err := os.Pipe()
	if err != nil {
		stdin.Close()
		return nil, false, err
	}
	defer stdout.Close()
	stderr, errW, err := os.Pipe()
	if err != nil {
		stdin.Close()
		outW.Close()
		return nil, false, err
	}
	defer stderr.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, outW, errW
	start := r.Start
	if start == nil {
		start = func(cmd *exec.Cmd) (func() error, error) { return cmd.Wait, cmd.Start() }
	}
	wait, err := start(cmd)
	stdin.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		return nil, false, fmt.Errorf("starting %s: %w", r.Binary, err)
	}
	// A goroutine: a child that does not read its stdin must not block
	// us. The write ends when the child reads or exits.
	go func() {
		inW.Write(append(cfg, '\n'))
		inW.Close()
	}()
	waitDone := make(chan error, 1)
	go func() { waitDone <- wait() }()

	var (
		logDone = make(chan struct{})
		lastLog []string // the child's last lines, for an error without a report
	)
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 0, 4096), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if r.Log != nil {
				r.Log(line)
			}
			lastLog = append(lastLog, line)
			if len(lastLog) > 5 {
				lastLog = lastLog[1:]
			}
		}
		io.Copy(io.Discard, stderr)
	}()

	var (
		failure  *fetchapi.Failure
		protoErr error
	)
	dec := json.NewDecoder(bufio.NewReaderSize(stdout, 64<<10))
	for {
		var rep fetchapi.Report
		if err := dec.Decode(&rep); err != nil {
			if !errors.Is(err, io.EOF) {
				protoErr = fmt.Errorf("reading the report of %s fetch: %w", r.Binary, err)
			}
			break
		}
		switch {
		case rep.Progress != nil:
			if r.Progress != nil {
				r.Progress(*rep.Progress)
			}
		case rep.Result != nil:
			if err := checkResult(rep.Result); err != nil {
				protoErr = fmt.Errorf("the result of %s fetch: %w", r.Binary, err)
				continue
			}
			res = rep.Result
		case rep.Error != nil:
			failure = rep.Error
		case rep.Waiting != nil:
			if r.Waiting != nil {
				r.Waiting(*rep.Waiting)
			}
		case rep.NeedsFetch:
			needsFetch = true
		}
	}
	io.Copy(io.Discard, stdout)
	<-logDone
	waitErr := <-waitDone

	switch {
	case failure != nil:
		return nil, false, failure
	case res != nil && waitErr == nil && protoErr == nil:
		return res, false, nil
	case needsFetch && waitErr == nil && protoErr == nil:
		return nil, true, nil
	case ctx.Err() != nil:
		return nil, false, canceled(ctx, r)
	}
	msg := fmt.Sprintf("%s fetch of %s ended without a result", r.Binary, storepath.Describe(r.Paths))
	if waitErr != nil {
		msg += ": " + waitErr.Error()
	} else if protoErr != nil {
		msg += ": " + protoErr.Error()
	}
	if len(lastLog) > 0 {
		msg += " (its last log: " + strings.Join(lastLog, " | ") + ")"
	}
	return nil, false, &fetchapi.Failure{Kind: fetchapi.KindOther, Message: msg}
}
