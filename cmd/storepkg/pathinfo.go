package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/storepkg/storepkg/pkg/narinfo"
	"github.com/storepkg/storepkg/pkg/store"
)

func newPathInfoCommand() *cobra.Command {
	var (
		root      string
		recursive bool
	)
	cmd := &cobra.Command{
		Use:   "path-info [flags] PATH...",
		Short: "Show what the store knows of valid paths",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			paths, err := parsePaths(args)
			if err != nil {
				return err
			}
			st, err := store.Open(ctx, root)
			if err != nil {
				return err
			}
			defer st.Close()
			if recursive {
				if paths, err = st.Closure(ctx, paths); err != nil {
					return err
				}
			}
			out := cmd.OutOrStdout()
			for _, p := range paths {
				info, err := st.QueryPathInfo(ctx, p)
				if err != nil {
					return err
				}
				refs := make([]string, len(info.References))
				for i, r := range info.References {
					refs[i] = r.Base()
				}
				fmt.Fprintf(out, "%s\n  NarHash: %s\n  NarSize: %d\n  References: %s\n", p.Absolute(),
					narinfo.Hash(info.NarHash).NixString(), info.NarSize, strings.Join(refs, " "))
				if info.Deriver != "" {
					fmt.Fprintf(out, "  Deriver: %s\n", info.Deriver)
				}
				for _, s := range info.Sigs {
					fmt.Fprintf(out, "  Sig: %s\n", s)
				}
				if info.CA != "" {
					fmt.Fprintf(out, "  CA: %s\n", info.CA)
				}
				fmt.Fprintf(out, "  Registered: %s\n", info.RegistrationTime.UTC().Format("2006-01-02T15:04:05Z"))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&root, "root", "/", "root directory of the Nix store")
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "show the whole closure")
	return cmd
}
