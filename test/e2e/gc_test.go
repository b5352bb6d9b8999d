package e2e

import (
	"bytes"
	"io/fs"
	"path/filepath"
	"testing"
	"time"
)

// TestBackupGC: after `backup rm`, `backup gc` reclaims the deleted
// backup's space on the target in two runs (mark, then delete, a grace
// later), and the backup that remains still restores bit-exact. A grace
// not longer than the server's backup deadline plus its GC margin is
// refused.
func TestBackupGC(t *testing.T) {
	needRoot(t)
	s := startServer(t, t.TempDir(), "--backup-max-duration", "10s", "--backup-gc-margin", "1s")
	targetDir := t.TempDir()
	s.must("target", "add", "local", "file://"+targetDir)
	var v volumeJSON
	s.mustJSON(&v, "volume", "create", "vol-g", "--size", "32MiB")

	first := bytes.Repeat([]byte("first-01"), 1<<20) // 8 MiB, same data in both backups' shared chunks
	writeAt(t, v.FUSEPath, first, 0)
	old := s.backup("vol-g")
	second := make([]byte, 8<<20)
	for i := range second {
		second[i] = byte(i*7 + i>>13)
	}
	writeAt(t, v.FUSEPath, second, 0)
	keep := s.backup("vol-g", "--full")

	before := du(t, targetDir)
	s.must("backup", "rm", old.ID)
	var res []struct {
		Target string `json:"target"`
		Report struct {
			Manifests     int   `json:"manifests"`
			PacksLive     int   `json:"packs_live"`
			PacksMarked   int   `json:"packs_marked"`
			PacksUnmarked int   `json:"packs_unmarked"`
			PacksDeleted  int   `json:"packs_deleted"`
			PagesMarked   int   `json:"pages_marked"`
			PagesUnmarked int   `json:"pages_unmarked"`
			PagesDeleted  int   `json:"pages_deleted"`
			BytesDeleted  int64 `json:"bytes_deleted"`
			// Pack indexes whose pack is gone (none here).
			IndexesMarked  int `json:"indexes_marked"`
			IndexesDeleted int `json:"indexes_deleted"`
		} `json:"report"`
	}
	s.fails(t, "invalid", "backup", "gc", "--grace", "10s")
	s.fails(t, "invalid", "backup", "gc", "--grace", "11s")
	const grace = 12 * time.Second
	s.mustJSON(&res, "backup", "gc", "--grace", grace.String())
	if len(res) != 1 || res[0].Report.PacksMarked == 0 || res[0].Report.PacksDeleted != 0 {
		t.Fatalf("first gc run: %+v, want packs marked and none deleted", res)
	}
	time.Sleep(grace)
	s.mustJSON(&res, "backup", "gc", "--grace", grace.String())
	if res[0].Report.PacksDeleted == 0 || res[0].Report.BytesDeleted == 0 {
		t.Fatalf("second gc run: %+v, want the marked packs deleted", res)
	}
	if after := du(t, targetDir); after >= before {
		t.Fatalf("target holds %d bytes after gc, %d before: nothing reclaimed", after, before)
	}
	s.must("backup", "verify", keep.ID, "--read-data")
	s.must("backup", "restore", keep.ID, "--to", "vol-r")
	var r volumeJSON
	s.mustJSON(&r, "volume", "info", "vol-r")
	if got := readAt(t, r.FUSEPath, len(second), 0); !bytes.Equal(got, second) {
		t.Fatal("the kept backup does not restore bit-exact after gc")
	}
	s.fails(t, "invalid", "backup", "gc", "--grace", "soon")
}

// du returns the bytes of the regular files under dir.
func du(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err == nil {
			n += fi.Size()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
