package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestWrite(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	for _, content := range []string{"first", "second, longer", ""} {
		if err := Write(p, []byte(content)); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil || string(got) != content {
			t.Fatalf("read %q, %v; want %q", got, err, content)
		}
		if _, err := os.Stat(p + TmpSuffix); !os.IsNotExist(err) {
			t.Fatalf("temporary file left behind: %v", err)
		}
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	// A write whose temporary file cannot be created fails.
	if err := Write(filepath.Join(dir, "missing", "f"), []byte("x")); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}

// TestWriteUncertain checks that only a failure after the rename is
// reported as ErrUncertain, and that the file then holds the new content.
func TestWriteUncertain(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := Write(p, []byte("old")); err != nil {
		t.Fatal(err)
	}
	if err := Write(filepath.Join(dir, "missing", "f"), []byte("x")); errors.Is(err, ErrUncertain) {
		t.Fatalf("a write failing before its rename is uncertain: %v", err)
	}
	injected := errors.New("injected EIO")
	syncDir = func(string) error { return injected }
	t.Cleanup(func() { syncDir = SyncDir })
	err := Write(p, []byte("new"))
	if !errors.Is(err, ErrUncertain) || !errors.Is(err, injected) {
		t.Fatalf("Write with a failing directory sync: %v; want ErrUncertain wrapping the sync error", err)
	}
	if got, _ := os.ReadFile(p); string(got) != "new" {
		t.Fatalf("file holds %q after the rename, want new", got)
	}
}

// TestRemove: a removal syncs its directory and reports that sync's
// failure; removing a path that is not there is no error.
func TestRemove(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := Write(p, []byte("x")); err != nil {
		t.Fatal(err)
	}
	var synced []string
	injected := errors.New("injected EIO")
	syncDir = func(d string) error { synced = append(synced, d); return injected }
	t.Cleanup(func() { syncDir = SyncDir })
	if err := Remove(p); !errors.Is(err, injected) || len(synced) != 1 || synced[0] != dir {
		t.Fatalf("Remove = %v, synced %v; want the sync of %s and its error", err, synced, dir)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("file after Remove: %v", err)
	}
	if err := Remove(p); err != nil {
		t.Fatalf("Remove of a missing file: %v", err)
	}
}
