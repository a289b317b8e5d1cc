package fetchrecord

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/procid"
)

func TestWriteRead(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not", "yet")
	start := time.Now().Add(-3 * time.Second).Round(0).UTC()
	r := &Record{
		ID: "abc-12-1", Pod: Pod{"ns", "web", "u-1"}, Roots: []string{"/nix/store/x"},
		State: Failed, Writer: procid.Self(), Start: start, Updated: start.Add(2 * time.Second), End: start.Add(2 * time.Second),
		Paths: Paths{Total: 3, Done: 1, Fetched: 1}, Bytes: Bytes{Total: 30, Done: 10},
		Caches: map[string]int64{"http://c": 10}, Refusals: Refusals{Signature: 2},
		Error: &fetchapi.Failure{Message: "m", Kind: "untrusted", Path: "/nix/store/x", Cache: "http://c"},
	}
	if err := Write(dir, r); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != "abc-12-1.json" {
		t.Fatalf("dir holds %v", entries)
	}
	got, err := Read(File(dir, r.ID))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Errorf("read back\n%+v\nwrote\n%+v", got, r)
	}
	if got.Duration() != 2*time.Second || !got.Completed() {
		t.Errorf("duration %v completed %v", got.Duration(), got.Completed())
	}
	if n, err := Count(dir); n != 1 || err != nil {
		t.Errorf("Count = %d, %v", n, err)
	}
	// A file named for another record, or of another version, is refused.
	os.Rename(File(dir, r.ID), File(dir, "other"))
	if _, err := Read(File(dir, "other")); err == nil {
		t.Error("a record under another id's name was read")
	}
	os.WriteFile(File(dir, "v2"), []byte(`{"version":2,"id":"v2"}`), 0o644)
	if _, err := Read(File(dir, "v2")); err == nil {
		t.Error("a version 2 record was read")
	}
	if err := Write(dir, &Record{ID: "../x"}); err == nil {
		t.Error("wrote a record with id ../x")
	}
}

func TestIDOf(t *testing.T) {
	for name, want := range map[string]bool{
		"a-1-2.json": true, ".a-1-2.tmp": false, ".x.json": false, "a": false, "a b.json": false, ".json": false,
	} {
		if _, ok := IDOf(name); ok != want {
			t.Errorf("IDOf(%q) ok = %v", name, ok)
		}
	}
}
