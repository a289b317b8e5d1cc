package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/storepkg/storepkg/pkg/fetch"
	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/fetchexec"
	"github.com/storepkg/storepkg/pkg/narinfo"
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
		gcRoots      []string
		timeout      time.Duration
		jsonReport   bool
		limits       fetchLimits
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
hold the fetcher, the decoders or the store's database.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			var rep *fetchapi.Reporter
			if jsonReport {
				rep = fetchapi.NewReporter(os.Stdout)
			}
			f, st, roots, paths, err := setupFetch(ctx, root, substituters, keys, netrcFile, maxJobs, limits, gcRoots, args)
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
			for _, g := range roots {
				if err := st.AddGCRoot(ctx, g.Name, g.Path); err != nil {
					if rep != nil {
						rep.Fail(&fetchapi.Failure{Message: err.Error(), Kind: fetch.ErrorKind(err)})
					}
					return err
				}
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
	cmd.Flags().StringArrayVar(&gcRoots, "gc-root", nil, "NAME=PATH: make PATH a GC root gcroots/storepkg/NAME before fetching, repeatable")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (0: never)")
	cmd.Flags().BoolVar(&jsonReport, "json", false, "report progress and the result or error as JSON lines on stdout")
	return cmd
}

// fetchLimits are fetch's bounds on what one closure may need.
type fetchLimits struct {
	narBytes int64
	paths    int
}

// setupFetch checks the command line and opens the store and the fetcher.
func setupFetch(ctx context.Context, root string, substituters, keys []string, netrcFile string, maxJobs int, limits fetchLimits, gcRoots, args []string) (*fetch.Fetcher, *store.Store, []fetchexec.GCRoot, []storepath.Path, error) {
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
	opts := fetch.Options{Substituters: substituters, MaxJobs: maxJobs, MaxNarBytes: limits.narBytes, MaxPaths: limits.paths}
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
