package nodeinstall

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"
)

// ReadyLabel is the node label set once the runtime answers.
const ReadyLabel = "storepkg.dev/ready"

// NodeLabeler sets (ready) or removes (!ready) the node's
// storepkg.dev/ready=true label. It is the boundary to the Kubernetes API:
// the agent that has a client passes one; without it nothing is labelled.
type NodeLabeler func(ctx context.Context, ready bool) error

// Installer runs install and uninstall end to end: plan, show, apply,
// restart containerd, wait for the runtime, label.
type Installer struct {
	Options
	Restart     string        // a restart mode (see ValidRestart); "" = auto
	DryRun      bool          // show the plan and the restart command, change nothing
	Out         io.Writer     // where to tell what happens
	Probe       ReadyProbe    // nil: CRIProbe on containerd's socket
	Label       NodeLabeler   // nil: no labelling
	WaitTimeout time.Duration // how long to wait for the runtime; default 2m
}

func (in *Installer) printf(format string, args ...any) {
	if in.Out != nil {
		fmt.Fprintf(in.Out, format, args...)
	}
}

// Install puts storepkg on the node. Run again, it changes nothing and
// restarts nothing (and labels the node if the runtime answers).
func (in *Installer) Install(ctx context.Context) error {
	if err := ValidRestart(in.Restart); err != nil {
		return err
	}
	plan, err := PlanInstall(ctx, in.Options)
	if err != nil {
		return err
	}
	if in.Out != nil {
		plan.Describe(in.Out)
	}
	restart := plan.RestartNeeded()
	argv, err := restartArgv(ctx, in.Restart, plan.Detection.Flavor, in.Runner)
	if err != nil {
		return err
	}
	if in.DryRun {
		if restart && argv != nil {
			in.printf("would restart containerd: %s\n", strings.Join(argv, " "))
		}
		in.printf("dry run: nothing changed\n")
		return nil
	}
	if err := plan.Apply(); err != nil {
		return err
	}
	if restart {
		if argv == nil {
			in.printf("containerd's config changed: restart containerd to load it; the node is not labelled %s until the runtime answers\n", ReadyLabel)
			return nil
		}
		if err := in.run(ctx, argv); err != nil {
			return err
		}
	}
	if err := in.waitReady(ctx, plan.Detection); err != nil {
		return err
	}
	if in.Label != nil {
		if err := in.Label(ctx, true); err != nil {
			return fmt.Errorf("label %s=true: %w", ReadyLabel, err)
		}
		in.printf("labelled the node %s=true\n", ReadyLabel)
	}
	return nil
}

// Uninstall takes storepkg off the node: the label first (so no new pods
// come), then every file and edit install made, then a restart.
func (in *Installer) Uninstall(ctx context.Context) error {
	if err := ValidRestart(in.Restart); err != nil {
		return err
	}
	plan, err := PlanUninstall(ctx, in.Options)
	if err != nil {
		return err
	}
	if in.Out != nil {
		plan.Describe(in.Out)
	}
	argv, err := restartArgv(ctx, in.Restart, plan.Detection.Flavor, in.Runner)
	if err != nil {
		return err
	}
	if in.DryRun {
		if plan.RestartNeeded() && argv != nil {
			in.printf("would restart containerd: %s\n", strings.Join(argv, " "))
		}
		in.printf("dry run: nothing changed\n")
		return nil
	}
	if in.Label != nil {
		if err := in.Label(ctx, false); err != nil {
			return fmt.Errorf("remove label %s: %w", ReadyLabel, err)
		}
	}
	if err := plan.Apply(); err != nil {
		return err
	}
	if plan.RestartNeeded() {
		if argv == nil {
			in.printf("containerd's config changed: restart containerd to unload the storepkg runtime\n")
			return nil
		}
		return in.run(ctx, argv)
	}
	return nil
}

func (in *Installer) run(ctx context.Context, argv []string) error {
	if in.Runner == nil {
		return fmt.Errorf("cannot restart containerd: no way to run commands on the host")
	}
	in.printf("restarting containerd: %s\n", strings.Join(argv, " "))
	if _, err := in.Runner.Run(ctx, argv...); err != nil {
		return fmt.Errorf("restart containerd: %w", err)
	}
	return nil
}

// waitReady polls the probe until it passes or the wait times out.
func (in *Installer) waitReady(ctx context.Context, d *Detection) error {
	probe := in.Probe
	if probe == nil {
		probe = CRIProbe(in.Options.withDefaults().hostFS().localPath(d.Socket), RuntimeName)
	}
	timeout := in.WaitTimeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
		last = probe(pctx)
		pcancel()
		if last == nil {
			in.printf("the %s runtime answers\n", RuntimeName)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w within %s: %v", errNotReady, timeout, last)
		case <-time.After(time.Second):
		}
	}
}
