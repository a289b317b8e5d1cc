package store

import (
	"fmt"
	"io/fs"

	"golang.org/x/sys/unix"
)

// Sync makes everything written to the store's filesystem so far durable
// – the unpacked trees' data, their directories and the renames that put
// them in place – with one syncfs(2). The fetch calls it once per batch of
// paths, between CommitInstall and Register: a path registered valid is
// complete on disk after a power loss.
//
// One syncfs rather than an fsync of every file and directory: on ext4,
// each fsync commits the journal and flushes the device, and for a closure
// of ~10,000 files that costs about twice the whole fetch, while syncfs
// costs what writing the data costs (docs/architecture.md, Durability).
// Its price is that it also writes out other dirty data on the same
// filesystem, which the kernel would write within ~30 s anyway.
func (s *Store) Sync() error {
	fd, err := unix.Open(s.storeDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("store: sync: %w", &fs.PathError{Op: "open", Path: s.storeDir, Err: err})
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("store: sync: %w", &fs.PathError{Op: "syncfs", Path: s.storeDir, Err: err})
	}
	return nil
}
