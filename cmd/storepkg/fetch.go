package main

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/storepkg/storepkg/pkg/fetch"
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
	)
	cmd := &cobra.Command{
		Use:   "fetch [flags] PATH...",
		Short: "Substitute the closure of store paths from binary caches into the store",
		Long: `fetch makes the closure of the given store paths valid in the Nix store
under --root, downloading missing paths from the substituters (in priority
order) and accepting only paths signed by a trusted public key. It exits 0
once the whole closure is valid.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			paths, err := parsePaths(args)
			if err != nil {
				return err
			}
			opts := fetch.Options{Substituters: substituters, MaxJobs: maxJobs}
			if len(opts.Substituters) == 0 {
				opts.Substituters = []string{fetch.DefaultSubstituter}
				if len(keys) == 0 {
					keys = []string{fetch.DefaultPublicKey}
				}
			}
			for _, k := range keys {
				pk, err := narinfo.ParsePublicKey(k)
				if err != nil {
					return err
				}
				opts.TrustedKeys = append(opts.TrustedKeys, pk)
			}
			if netrcFile != "" {
				if opts.Netrc, err = fetch.ParseNetrc(netrcFile); err != nil {
					return err
				}
			}
			var bar *progressBar
			if term.IsTerminal(int(os.Stderr.Fd())) {
				bar = newProgressBar()
				opts.Progress = bar.update
			}
			st, err := store.Open(ctx, root)
			if err != nil {
				return err
			}
			defer st.Close()
			f, err := fetch.New(st, opts)
			if err != nil {
				return err
			}
			res, err := f.Fetch(ctx, paths)
			bar.finish()
			if err != nil {
				return err
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
	return cmd
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
	p     fetch.Progress
}

func newProgressBar() *progressBar { return &progressBar{start: time.Now()} }

func (b *progressBar) update(p fetch.Progress) {
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
