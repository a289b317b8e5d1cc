package store

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/storepkg/storepkg/internal/powercut"
)

// TestPowerCutAfterCreate: power is cut while the first process to open a
// new store still has it open, after ext4 committed its journal (every
// 5 s by default, or when anyone fsyncs anything on the filesystem, as
// here) but before its ~30 s writeback of file data. The store that
// survives opens: the schema file, which says the tables exist, is never
// durable before they are.
func TestPowerCutAfterCreate(t *testing.T) {
	disk := powercut.New(t, 32<<20)
	st := openStore(t, disk.Dir)
	f, err := os.Create(filepath.Join(disk.Dir, "other"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	after := disk.Cut(t)
	st.Close()
	st2, err := Open(context.Background(), after)
	if err != nil {
		t.Fatalf("opening the store after the power cut: %v", err)
	}
	st2.Close()
}
