package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/fetchexec"
	"github.com/storepkg/storepkg/pkg/fetchslot"
	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/peer"
	"github.com/storepkg/storepkg/pkg/store"
	"github.com/storepkg/storepkg/pkg/storepath"
)

func newFetchCommand() *cobra.Command {
	var (
		root         string
		substituters []string
		keys         []string
		netrcFile    string
		maxJobs      int
		lookupJobs   int
		gcRoots      []string
		timeout      time.Duration
		jsonReport   bool
		limits       fetchLimits
		cacheConfig  string
		slots        slotFlags
		onlyIfValid  bool
		cpuProfile   string
		peersFile    string
	)
	cmd := &cobra.Command{
		Use:   "fetch [flags] PATH...",
		Short: "Substitute the closure of store paths from binary caches into the store",
		Long: `fetch makes the closure of the given store paths valid in the Nix store
under --root, downloading missing paths from the substituters (in priority
order) and accepting only paths signed by a trusted public key. It exits 0
once the whole closure is valid.

With --json it reports progress and then its result or error as JSON lines
on stdout (pkg/fetchapi): the shim runs it so that per-pod shims never
hold the fetcher, the decoders or the store's database.

With --fetch-slots it downloads only while it holds one of the node's
--max-concurrent-fetches slots, waiting in line with the shims' fetches;
a closure already valid needs none. The shims take the slot themselves
and hand it over (--slot-fd), and pass the caches on stdin
(--cache-config -), so no URL credentials show in /proc/PID/cmdline.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			stopProfile, err := startCPUProfile(cpuProfile)
			if err != nil {
				return err
			}
			defer stopProfile()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			var rep *fetchapi.Reporter
			if jsonReport {
				rep = fetchapi.NewReporter(os.Stdout)
			}
			held, err := slots.inherited()
			if err == nil && cacheConfig != "" {
				substituters, keys, netrcFile, err = readCacheConfig(cmd, cacheConfig, substituters, keys, netrcFile)
			}
			var (
				f     *fetch.Fetcher
				st    *store.Store
				roots []fetchexec.GCRoot
				paths []storepath.Path
			)
			if err == nil {
				f, st, roots, paths, err = setupFetch(ctx, root, substituters, keys, netrcFile, peersFile, maxJobs, lookupJobs, limits, gcRoots, args)
			}
			if err != nil {
				if rep != nil {
					kind := fetchapi.KindInvalidArgument
					if store.NoSpace(err) { // creating the store's database
						kind = fetchapi.KindNoSpace
					}
					rep.Fail(&fetchapi.Failure{Message: err.Error(), Kind: kind})
				}
				return err
			}
			defer st.Close()
			if held != nil {
				// Held until the fetch ends; the finalizer of an
				// unreferenced *os.File would close it sooner.
				defer held.Close()
			}
			for _, g := range roots {
				if err := st.AddGCRoot(ctx, g.Name, g.Path); err != nil {
					if rep != nil {
						rep.Fail(&fetchapi.Failure{Message: err.Error(), Kind: fetch.ErrorKind(err)})
					}
					return err
				}
			}
			if onlyIfValid || (slots.dir != "" && held == nil) {
				// A closure already valid needs no slot: check first.
				res, err := validClosure(ctx, st, paths)
				switch {
				case err != nil:
					if rep != nil {
						rep.Fail(fetchFailure(err))
					}
					return err
				case res != nil && rep != nil:
					return rep.Result(res)
				case res != nil:
					return nil
				case onlyIfValid && rep != nil:
					return rep.NeedsFetch()
				case onlyIfValid:
					return errors.New("the closure is not valid in the store (--only-if-valid)")
				}
				s, err := slots.acquire(ctx, rep)
				if err != nil {
					if rep != nil {
						rep.Fail(fetchFailure(err))
					}
					return err
				}
				defer s.Release()
			}
			var (
				res *fetchapi.Result
				bar *progressBar
			)
			switch {
			case rep != nil:
				jp := newJSONProgress(rep)
				res, err = f.FetchProgress(ctx, paths, jp.update)
				jp.flush()
			default:
				if term.IsTerminal(int(os.Stderr.Fd())) {
					bar = newProgressBar()
				}
				res, err = f.FetchProgress(ctx, paths, bar.updateFunc())
				bar.finish()
			}
			if err != nil {
				if rep != nil {
					rep.Fail(fetchFailure(err))
				}
				return err
			}
			if rep != nil {
				return rep.Result(res)
			}
			if bar != nil {
				fmt.Fprintf(os.Stderr, "%d paths valid, %d fetched (%s)\n", len(res.Closure), len(res.Fetched), humanBytes(res.Downloaded))
				if res.PeerBytes > 0 || res.PeerFailures > 0 {
					fmt.Fprintf(os.Stderr, "%s from peers, %s from upstream, %d peer failures\n", humanBytes(res.PeerBytes), humanBytes(res.UpstreamBytes), res.PeerFailures)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&root, "root", "/", "root directory of the Nix store (the store is ROOT/nix/store)")
	cmd.Flags().StringArrayVar(&substituters, "substituter", nil, "binary cache URL, repeatable (file://, http://, https://; ?priority=N, ?trusted=1); default "+fetch.DefaultSubstituter)
	cmd.Flags().StringArrayVar(&keys, "trusted-public-key", nil, "trusted signing key NAME:BASE64, repeatable")
	cmd.Flags().StringVar(&netrcFile, "netrc-file", "", "credentials for private caches (curl netrc; login \"bearer\" sends a bearer token)")
	cmd.Flags().IntVar(&maxJobs, "max-jobs", 0, "parallel NAR downloads (default: 2 per CPU, 4 to 16)")
	cmd.Flags().Int64Var(&limits.narBytes, "max-nar-bytes", 0, "refuse, before downloading anything, a closure whose paths not yet in the store have more NAR bytes (signed NarSize) than this (0: no limit)")
	cmd.Flags().IntVar(&limits.paths, "max-paths", 0, "refuse, before downloading anything, a closure with more paths not yet in the store than this (0: no limit)")
	cmd.Flags().StringArrayVar(&limits.countWith, "count-with", nil, "PATH: count PATH's closure against --max-nar-bytes and --max-paths together with the paths fetched, without fetching it (a pod's other paths), repeatable")
	cmd.Flags().StringArrayVar(&gcRoots, "gc-root", nil, "NAME=PATH: make PATH a GC root gcroots/storepkg/NAME before fetching, repeatable")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (0: never)")
	cmd.Flags().BoolVar(&jsonReport, "json", false, "report progress and the result or error as JSON lines on stdout")
	cmd.Flags().IntVar(&lookupJobs, "max-lookups", 0, "parallel narinfo requests (default 64)")
	cmd.Flags().StringVar(&cacheConfig, "cache-config", "", `read the caches from this JSON file ("-": stdin): {"substituters": [...], "trustedPublicKeys": [...], "netrcFile": "..."}, in place of --substituter, --trusted-public-key and --netrc-file; keeps credentials in URLs off the command line`)
	cmd.Flags().StringVar(&slots.dir, "fetch-slots", "", "run only while holding one of the node's fetch slots under this directory, waiting in line for one (the shims use "+fetchslot.DefaultDir+")")
	cmd.Flags().IntVar(&slots.n, "max-concurrent-fetches", 0, "with --fetch-slots: how many fetches the node runs at once")
	cmd.Flags().IntVar(&slots.fd, "slot-fd", -1, "the caller holds a fetch slot (pkg/fetchslot) on this inherited descriptor: fetch without waiting for one")
	cmd.Flags().BoolVar(&onlyIfValid, "only-if-valid", false, "make the GC roots, then report the closure if it is already valid and fetch nothing otherwise (with --json: a needsFetch line)")
	cmd.Flags().StringVar(&peersFile, "peers", "", "take paths from the cluster's other nodes listed in this peers file (written by the node agent; the shims pass "+peer.DefaultFile+"); a missing or bad file means no peers")
	cmd.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a Go CPU profile of the fetch to this file (for benchmarks)")
	cmd.Flags().MarkHidden("cpuprofile")
	return cmd
}

// slotFlags are fetch's node-wide slot flags.
type slotFlags struct {
	dir string
	n   int
	fd  int
}

// inherited takes the slot a caller handed over (--slot-fd), keeping
// it from the decoders fetch starts. nil without one.
func (s *slotFlags) inherited() (*os.File, error) {
	switch {
	case s.fd >= 0 && s.dir != "":
		return nil, errors.New("--slot-fd and --fetch-slots: give one")
	case s.dir != "" && s.n <= 0:
		return nil, errors.New("--fetch-slots needs --max-concurrent-fetches of at least 1")
	case s.fd < 0:
		return nil, nil
	case s.fd <= 2:
		return nil, fmt.Errorf("--slot-fd %d: not a descriptor above stderr", s.fd)
	}
	var st unix.Stat_t
	if err := unix.Fstat(s.fd, &st); err != nil {
		return nil, fmt.Errorf("--slot-fd %d: %w", s.fd, err)
	}
	unix.CloseOnExec(s.fd)
	return os.NewFile(uintptr(s.fd), "fetch-slot"), nil
}

// acquire waits for a slot, saying so on stderr and in the report.
func (s *slotFlags) acquire(ctx context.Context, rep *fetchapi.Reporter) (*fetchslot.Slot, error) {
	return fetchslot.Acquire(ctx, s.dir, s.n, func() {
		logrus.Infof("waiting for a fetch slot (the node runs at most %d fetches at once, %s)", s.n, s.dir)
		if rep != nil {
			rep.Waiting(fetchapi.Waiting{Slots: s.n})
		}
	})
}

// readCacheConfig reads --cache-config, which replaces the cache flags.
func readCacheConfig(cmd *cobra.Command, file string, substituters, keys []string, netrcFile string) ([]string, []string, string, error) {
	if len(substituters) > 0 || len(keys) > 0 || netrcFile != "" {
		return nil, nil, "", errors.New("--cache-config replaces --substituter, --trusted-public-key and --netrc-file: give either")
	}
	var (
		data []byte
		err  error
	)
	if file == "-" {
		data, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), maxCacheConfig+1))
	} else {
		data, err = os.ReadFile(file)
	}
	if err != nil {
		return nil, nil, "", fmt.Errorf("--cache-config %s: %w", file, err)
	}
	if len(data) > maxCacheConfig {
		return nil, nil, "", fmt.Errorf("--cache-config %s: larger than %d bytes", file, maxCacheConfig)
	}
	var c fetchapi.CacheConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, nil, "", fmt.Errorf("--cache-config %s: %w", file, err)
	}
	return c.Substituters, c.TrustedPublicKeys, c.NetrcFile, nil
}

// maxCacheConfig bounds what --cache-config reads.
const maxCacheConfig = 1 << 20

// validClosure is the closure of paths if it is valid already, else nil.
func validClosure(ctx context.Context, st *store.Store, paths []storepath.Path) (*fetchapi.Result, error) {
	if err := st.AddTempRoots(ctx, paths...); err != nil {
		return nil, err
	}
	closure, err := st.Closure(ctx, paths)
	switch {
	case errors.Is(err, store.ErrNotValid):
		return nil, nil
	case err != nil:
		return nil, err
	}
	return &fetchapi.Result{Closure: closure}, nil
}

// fetchLimits are fetch's bounds on what one closure may need.
type fetchLimits struct {
	narBytes  int64
	paths     int
	countWith []string // store paths; parsed by setupFetch
}

// setupFetch checks the command line and opens the store and the fetcher.
func setupFetch(ctx context.Context, root string, substituters, keys []string, netrcFile, peersFile string, maxJobs, lookupJobs int, limits fetchLimits, gcRoots, args []string) (*fetch.Fetcher, *store.Store, []fetchexec.GCRoot, []storepath.Path, error) {
	paths, err := parsePaths(args)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	var roots []fetchexec.GCRoot
	for _, g := range gcRoots {
		name, abs, ok := strings.Cut(g, "=")
		if !ok || name == "" {
			return nil, nil, nil, nil, fmt.Errorf("--gc-root %q: want NAME=PATH", g)
		}
		p, err := storepath.Parse(abs)
		if err != nil {
			return nil, nil, nil, nil, fmt.Errorf("--gc-root %q: %w", g, err)
		}
		roots = append(roots, fetchexec.GCRoot{Name: name, Path: p})
	}
	if limits.narBytes < 0 || limits.paths < 0 {
		return nil, nil, nil, nil, errors.New("--max-nar-bytes and --max-paths must not be negative")
	}
	if maxJobs < 0 || lookupJobs < 0 {
		return nil, nil, nil, nil, errors.New("--max-jobs and --max-lookups must not be negative")
	}
	opts := fetch.Options{Substituters: substituters, MaxJobs: maxJobs, LookupJobs: lookupJobs, MaxNarBytes: limits.narBytes, MaxPaths: limits.paths}
	for _, abs := range limits.countWith {
		p, err := storepath.Parse(abs)
		if err != nil {
			return nil, nil, nil, nil, fmt.Errorf("--count-with %q: %w", abs, err)
		}
		opts.BoundAlso = append(opts.BoundAlso, p)
	}
	if len(opts.Substituters) == 0 {
		opts.Substituters = []string{fetch.DefaultSubstituter}
		if len(keys) == 0 {
			keys = []string{fetch.DefaultPublicKey}
		}
	}
	for _, k := range keys {
		pk, err := narinfo.ParsePublicKey(k)
		if err != nil {
			return nil, nil, nil, nil, fmt.Errorf("--trusted-public-key: %w", err)
		}
		opts.TrustedKeys = append(opts.TrustedKeys, pk)
	}
	if netrcFile != "" {
		if opts.Netrc, err = fetch.ParseNetrc(netrcFile); err != nil {
			return nil, nil, nil, nil, fmt.Errorf("--netrc-file: %w", err)
		}
	}
	if peersFile != "" {
		// Peers are an optimisation, never a reason to fail: a bad file
		// is a warning, and the fetch goes upstream alone.
		if opts.Peers, err = peer.LoadFile(peersFile); err != nil {
			logrus.WithError(err).Warn("fetching without peers")
		}
	}
	st, err := store.Open(ctx, root)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	f, err := fetch.New(st, opts)
	if err != nil {
		st.Close()
		return nil, nil, nil, nil, err
	}
	return f, st, roots, paths, nil
}

// fetchFailure is a fetch error as --json reports it.
func fetchFailure(err error) *fetchapi.Failure {
	f := &fetchapi.Failure{Message: err.Error(), Kind: fetch.ErrorKind(err)}
	var pe *fetch.PathError
	if errors.As(err, &pe) {
		f.Path, f.Cache = pe.Path.Absolute(), pe.Cache
	}
	return f
}

// jsonProgressInterval bounds how often --json reports progress: the
// shim rewrites its status record once a second.
const jsonProgressInterval = 250 * time.Millisecond

type jsonProgress struct {
	rep     *fetchapi.Reporter
	mu      sync.Mutex
	last    time.Time
	pending *fetchapi.Progress
}

func newJSONProgress(rep *fetchapi.Reporter) *jsonProgress { return &jsonProgress{rep: rep} }

func (j *jsonProgress) update(p fetchapi.Progress) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if time.Since(j.last) < jsonProgressInterval {
		j.pending = &p
		return
	}
	j.last, j.pending = time.Now(), nil
	j.rep.Progress(p)
}

// flush reports the last progress held back, before the result.
func (j *jsonProgress) flush() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.pending != nil {
		j.rep.Progress(*j.pending)
		j.pending = nil
	}
}

func parsePaths(args []string) ([]storepath.Path, error) {
	var paths []storepath.Path
	for _, a := range args {
		p, err := storepath.Parse(a)
		if err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// progressBar draws one status line on a terminal, at most ten times a second.
type progressBar struct {
	mu    sync.Mutex
	start time.Time
	last  time.Time
	p     fetchapi.Progress
}

func newProgressBar() *progressBar { return &progressBar{start: time.Now()} }

// updateFunc is the fetcher's progress callback; nil without a bar.
func (b *progressBar) updateFunc() func(fetchapi.Progress) {
	if b == nil {
		return nil
	}
	return b.update
}

func (b *progressBar) update(p fetchapi.Progress) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.p = p
	if time.Since(b.last) < 100*time.Millisecond {
		return
	}
	b.last = time.Now()
	b.draw()
}

func (b *progressBar) draw() {
	rate := float64(b.p.BytesDone) / max(time.Since(b.start).Seconds(), 0.001)
	fmt.Fprintf(os.Stderr, "\r\x1b[K[%d/%d paths] %s/%s %s/s", b.p.PathsDone, b.p.PathsTotal,
		humanBytes(b.p.BytesDone), humanBytes(b.p.BytesTotal), humanBytes(int64(rate)))
}

func (b *progressBar) finish() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.p.PathsTotal > 0 {
		b.draw()
		fmt.Fprintln(os.Stderr)
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
