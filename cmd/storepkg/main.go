// Command storepkg is the operator's CLI: substitute closures into a node
// store, inspect it, and (later) collect garbage and install on nodes.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logrus.SetOutput(os.Stderr)
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "storepkg:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	var debug bool
	root := &cobra.Command{
		Use:           "storepkg",
		Short:         "Run pods from Nix store paths: node store and binary-cache tools",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(*cobra.Command, []string) {
			if debug {
				logrus.SetLevel(logrus.DebugLevel)
			}
		},
	}
	root.PersistentFlags().BoolVar(&debug, "debug", false, "log debug messages")
	root.AddCommand(newFetchCommand(), newPathInfoCommand(), newGCCommand(), newVersionCommand(), newNodeCommand(), newAgentCommand())
	return root
}
