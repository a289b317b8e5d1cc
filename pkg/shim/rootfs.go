package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/api/types"
	cmount "github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/pkg/mount"
)

// buildSkeleton builds storepkg's skeleton into the container's own
// snapshot: it mounts rootfs (containerd's mounts of the snapshot of the
// placeholder image) at the bundle's rootfs directory, builds the
// skeleton there and unmounts it. runc's task service then mounts the
// same rootfs for the container as for any runc container, and unmounts
// it on delete. So every write of the container, the skeleton included,
// lands in the snapshot's writable layer, which the snapshotter measures
// and CRI reports (kubelet's ephemeral-storage accounting and eviction),
// never in the bundle on the node's /run. Nothing of this stays mounted
// when buildSkeleton returns, whatever happens.
// image names the placeholder image in errors.
func buildSkeleton(ctx context.Context, bundle, image string, rootfs []*types.Mount) (err error) {
	if len(rootfs) == 0 {
		return errdefsf(errdefs.ErrFailedPrecondition,
			"storepkg: the container has no rootfs mounts: a store-path container's writable layer is the snapshot of its (placeholder) image, and containerd passed none")
	}
	// Where runc's task service mounts it (cmd/containerd-shim-runc-v2/runc.NewContainer).
	target := filepath.Join(bundle, "rootfs")
	if err := os.Mkdir(target, 0o711); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("storepkg: container rootfs: %w", err)
	}
	mounts := cmount.FromProto(rootfs)
	defer func() {
		if uerr := unmountRootfs(target); uerr != nil {
			log.G(ctx).WithError(uerr).Error("storepkg: unmounting the container's rootfs after building its skeleton")
			if err == nil {
				err = fmt.Errorf("storepkg: unmounting the container's rootfs %s after building its skeleton: %w", target, uerr)
			}
		}
	}()
	if err := cmount.All(mounts, target); err != nil {
		return fmt.Errorf("storepkg: mounting the container's rootfs at %s to build its skeleton: %w", target, err)
	}
	if err := mount.Skeleton(target); err != nil {
		return fmt.Errorf("storepkg: the placeholder image %s cannot hold the container's skeleton: %v: %w", image, err, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// unmountRootfs unmounts everything at and under target; what a plain
// unmount cannot (busy) is detached, so no mount outlives the call.
func unmountRootfs(target string) error {
	err := cmount.UnmountRecursive(target, 0)
	if err == nil {
		return nil
	}
	if derr := cmount.UnmountRecursive(target, unix.MNT_DETACH); derr != nil {
		return errors.Join(err, derr)
	}
	return nil
}
