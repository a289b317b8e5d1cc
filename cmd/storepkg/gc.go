package main

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/storepkg/storepkg/pkg/store"
)

func newGCCommand() *cobra.Command {
	var (
		root     string
		dryRun   bool
		maxFreed string
		minAge   string
	)
	cmd := &cobra.Command{
		Use:   "gc [flags]",
		Short: "Delete store paths that no garbage collector root keeps alive",
		Long: `gc collects garbage in the Nix store under --root the way nix-store --gc
does, and can run next to Nix and to storepkg fetches: roots are the links
under nix/var/nix/gcroots and profiles, running processes' store paths and
the temporary roots of live processes.

Indirect roots (links to links into the store, such as gcroots/auto/*
-> /home/u/result -> /nix/store/...) are looked up with --root as "/":
links are followed inside --root and ".." stops there, never on this
machine outside it. gc never removes a root it does not own (Nix removes
gcroots/auto links whose target is gone; gc leaves them). A possible root
it cannot resolve (a directory it cannot read, a loop of links, a target
in a top-level directory that --root lacks, such as one not mounted into
a container) could keep any path: then no valid path is deleted, the
roots are listed and gc exits with an error. Entries of the store that
are not valid paths are still deleted.

First the temporary directories of fetches killed mid-NAR are removed
(those whose path no live fetch holds locked, unchanged for --min-age),
then the GC roots of shims that are gone (killed, or from before a
reboot; an owner record that cannot be read keeps its roots and is
reported), and the store views (the shared /nix/store directories of
containers, hard links into the store) that no live container uses, so
that deleting their paths frees the space. If any of these fails, the
collection still runs and gc exits with the error.

--dry-run prints the paths that would be deleted, one per line and sorted,
as nix-store --gc --print-dead does, and a summary on standard error.
--max-freed stops once that much has been freed, the views' bytes
included (bytes, or with a suffix K, M, G or T, powers of 1024 as in Nix). --min-age keeps paths registered
more recently than that, with their closures (Go durations such as 36h, or
days: 7d, 1d12h).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			opts := store.GCOptions{DryRun: dryRun}
			var err error
			if maxFreed != "" {
				if opts.MaxFreed, err = parseSize(maxFreed); err != nil {
					return fmt.Errorf("--max-freed: %w", err)
				}
			}
			if minAge != "" {
				if opts.MinAge, err = parseAge(minAge); err != nil {
					return fmt.Errorf("--min-age: %w", err)
				}
			}
			st, err := store.Open(ctx, root)
			if err != nil {
				return err
			}
			defer st.Close()
			// Roots of gone shims, then unused store views, then the
			// collection (see CollectNodeGarbage).
			res, err := st.CollectNodeGarbage(ctx, opts)
			stderr := cmd.ErrOrStderr()
			if res.Temporaries != nil && len(res.Temporaries.Removed) > 0 {
				verb := "removed"
				if dryRun {
					verb = "would remove"
				}
				fmt.Fprintf(stderr, "%s %d temporary directories of killed fetches\n", verb, len(res.Temporaries.Removed))
			}
			if res.Swept != nil && len(res.Swept.Owners) > 0 {
				verb := "removed"
				if dryRun {
					verb = "would remove (the list below still counts them as roots)"
				}
				fmt.Fprintf(stderr, "%s %d GC roots of %d shims that are gone\n", verb, len(res.Swept.Roots), len(res.Swept.Owners))
			}
			if res.Swept != nil {
				for _, r := range res.Swept.Invalid {
					fmt.Fprintf(stderr, "kept the GC roots of %s: %v (remove the record and the roots once its pod is gone)\n", r.Owner, r)
				}
			}
			if len(res.Views.Removed) > 0 {
				verb := "removed"
				if dryRun {
					verb = "would remove"
				}
				fmt.Fprintf(stderr, "%s %d unused store views\n", verb, len(res.Views.Removed))
			}
			err = errors.Join(res.TempErr, res.SweepErr, res.PruneErr, err)
			var dead []string
			if res.GC != nil {
				dead = res.GC.Dead
				if u := res.GC.Unresolved; len(u) > 0 {
					fmt.Fprintf(stderr, "%d possible GC roots could not be resolved, so every valid path was kept:\n", len(u))
					for _, r := range u {
						fmt.Fprintf(stderr, "  %s\n", r)
					}
				}
			}
			out := cmd.OutOrStdout()
			mib := float64(res.BytesFreed()) / (1024 * 1024)
			if dryRun {
				if err != nil && !errors.Is(err, store.ErrUnresolvedRoots) {
					return err
				}
				dead = slices.Clone(dead)
				slices.Sort(dead)
				for _, p := range dead {
					fmt.Fprintln(out, p)
				}
				fmt.Fprintf(stderr, "%d paths, %.2f MiB would be freed\n", len(dead), mib)
				return err
			}
			fmt.Fprintf(out, "deleted %d paths, freed %.2f MiB\n", len(dead), mib)
			return err
		},
	}
	cmd.Flags().StringVar(&root, "root", "/", "root directory of the Nix store")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be deleted, delete nothing")
	cmd.Flags().StringVar(&maxFreed, "max-freed", "", "stop after freeing `SIZE` (e.g. 500M, 10G, or bytes)")
	cmd.Flags().StringVar(&minAge, "min-age", "", "keep paths registered less than `DURATION` ago (e.g. 7d, 36h)")
	return cmd
}

// parseSize reads a byte count with an optional binary unit suffix K, M,
// G or T (optionally followed by "B" or "iB"), as Nix's --max-freed.
func parseSize(s string) (uint64, error) {
	upper := strings.ToUpper(strings.TrimSpace(s))
	for _, suffix := range []string{"IB", "B"} {
		if len(upper) > len(suffix) && strings.HasSuffix(upper, suffix) {
			upper = upper[:len(upper)-len(suffix)]
			break
		}
	}
	mult := uint64(1)
	if n := len(upper); n > 0 {
		switch upper[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			upper = upper[:n-1]
		}
	}
	v, err := strconv.ParseFloat(upper, 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) || (mult == 1 && v != math.Trunc(v)) {
		return 0, fmt.Errorf("invalid size %q (want bytes, or a number with K, M, G or T)", s)
	}
	b := v * float64(mult)
	if b >= math.MaxUint64 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return uint64(b), nil
}

// parseAge reads a Go duration, plus whole or fractional days as a
// leading "<n>d" (7d, 1.5d, 1d12h).
func parseAge(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	var d time.Duration
	if i := strings.IndexByte(t, 'd'); i > 0 {
		days, err := strconv.ParseFloat(t[:i], 64)
		if err != nil || days < 0 || days > 100000 {
			return 0, fmt.Errorf("invalid duration %q (want e.g. 7d, 36h, 1d12h)", s)
		}
		d = time.Duration(days * 24 * float64(time.Hour))
		t = t[i+1:]
		if t == "" {
			return d, nil
		}
	}
	rest, err := time.ParseDuration(t)
	if err != nil || rest < 0 {
		return 0, fmt.Errorf("invalid duration %q (want e.g. 7d, 36h, 1d12h)", s)
	}
	return d + rest, nil
}
