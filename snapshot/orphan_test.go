package snapshot

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/strata-block/strata/internal/atomicfile"
)

// layerPool lists the layer pool's entries and those of layers/orphaned.
func layerPool(t *testing.T, dir string) (pool, orphaned []string) {
	t.Helper()
	for _, d := range []struct {
		path string
		out  *[]string
	}{{filepath.Join(dir, layersDir), &pool}, {filepath.Join(dir, layersDir, orphanDir), &orphaned}} {
		ents, err := os.ReadDir(d.path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		for _, e := range ents {
			*d.out = append(*d.out, e.Name())
		}
	}
	return pool, orphaned
}

// TestLayerCleanup checks what OpenStore does with layer files no volume
// metadata references: it removes those the store freed (.free marker) or
// never wrote to, and moves any other aside to layers/orphaned/, since
// such a layer lost its metadata some other way. Before, every
// unreferenced layer was deleted: one lost .meta file cost all of its
// volume's layers and snapshots.
func TestLayerCleanup(t *testing.T) {
	t.Parallel()
	const extra = "00000000000000ab"
	written := func(t *testing.T, dir string) {
		lp := filepath.Join(dir, layersDir, extra)
		if err := os.WriteFile(lp+".data", bytes.Repeat([]byte{7}, BlockSize), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(lp+".log", make([]byte, logHeaderSize+64), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	touch := func(t *testing.T, p string, n int) {
		if err := os.WriteFile(p, make([]byte, n), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name     string
		prepare  func(t *testing.T, dir, upper string)
		openErr  error    // OpenStore's error, if it must fail
		noVolume bool     // the volume is gone (its metadata was lost)
		pool     []string // entries left in layers/ besides the volume's six files and orphaned/
		orphaned []string // entries of layers/orphaned
	}{
		{name: "freed", prepare: func(t *testing.T, dir, _ string) {
			written(t, dir)
			touch(t, filepath.Join(dir, layersDir, extra+freeSuffix), 0)
		}},
		{name: "never-committed", prepare: func(t *testing.T, dir, _ string) {
			touch(t, filepath.Join(dir, layersDir, extra+".data"), 0)
			touch(t, filepath.Join(dir, layersDir, extra+".log"), logHeaderSize)
		}},
		{name: "lost-metadata", prepare: func(t *testing.T, dir, _ string) {
			written(t, dir)
		}, orphaned: []string{extra + ".data", extra + ".log"}},
		{name: "stale-marker", prepare: func(t *testing.T, dir, upper string) {
			touch(t, filepath.Join(dir, layersDir, upper+freeSuffix), 0)
		}},
		{name: "unknown-file", prepare: func(t *testing.T, dir, _ string) {
			touch(t, filepath.Join(dir, layersDir, "notes.txt"), 3)
		}, pool: []string{"notes.txt"}},
		{name: "meta-missing", prepare: func(t *testing.T, dir, _ string) {
			if err := os.Remove(filepath.Join(dir, volumesDir, "v"+metaSuffix)); err != nil {
				t.Fatal(err)
			}
		}, noVolume: true},
		{name: "volumes-dir-missing", prepare: func(t *testing.T, dir, _ string) {
			if err := os.RemoveAll(filepath.Join(dir, volumesDir)); err != nil {
				t.Fatal(err)
			}
		}, openErr: ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir, upper := crashTwoSnapshots(t)
			before, _ := layerPool(t, dir)
			if len(before) != 6 {
				t.Fatalf("chain of three layers has files %v", before)
			}
			tc.prepare(t, dir, upper)
			s, err := OpenStore(dir, nil)
			if tc.openErr != nil {
				if !errors.Is(err, tc.openErr) {
					t.Fatalf("OpenStore: %v, want %v", err, tc.openErr)
				}
				if after, _ := layerPool(t, dir); !slices.Equal(after, before) {
					t.Fatalf("a refused OpenStore changed the layer pool: %v, was %v", after, before)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close() })
			pool, orphaned := layerPool(t, dir)
			want := slices.Clone(tc.pool)
			wantOrphaned := slices.Clone(tc.orphaned)
			if tc.noVolume {
				wantOrphaned = append(wantOrphaned, before...)
			} else {
				want = append(want, before...)
			}
			if len(wantOrphaned) > 0 {
				want = append(want, orphanDir)
			}
			slices.Sort(want)
			slices.Sort(wantOrphaned)
			if !slices.Equal(pool, want) || !slices.Equal(orphaned, wantOrphaned) {
				t.Fatalf("after OpenStore: layers/ %v and orphaned/ %v; want %v and %v", pool, orphaned, want, wantOrphaned)
			}
			v, err := s.Open(t.Context(), "v")
			if tc.noVolume {
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("Open of a volume whose metadata is gone: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkCrashBlocks(t, v, 2)
		})
	}
}

// checkCrashBlocks checks that blocks 0..n-1 of v hold what
// crashTwoSnapshots wrote.
func checkCrashBlocks(t *testing.T, v interface {
	ReadAt([]byte, int64) (int, error)
}, n int) {
	t.Helper()
	got, want := make([]byte, BlockSize), make([]byte, BlockSize)
	for i := range n {
		crashFill(want, uint64(i), uint64(i+1))
		if _, err := v.ReadAt(got, int64(i)*BlockSize); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("block %d differs", i)
		}
	}
}

// TestBrokenVolumeKeepsLayers checks that while some volume's metadata is
// unreadable the store frees no layer files: the broken volume may share
// them (a clone). Before, deleting the clone's source deleted the layers
// the clone shared, so repairing the clone's metadata could no longer
// bring it back.
func TestBrokenVolumeKeepsLayers(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir, _ := crashTwoSnapshots(t)
	s, err := OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.Clone(ctx, "v", "b", "c")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// v's head holds data, so only its .free marker lets the clean open
	// below remove it rather than move it aside.
	v, err := s.Open(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(bytes.Repeat([]byte{9}, BlockSize), 5*BlockSize); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	mp := filepath.Join(dir, volumesDir, "c"+metaSuffix)
	good, err := os.ReadFile(mp)
	if err != nil {
		t.Fatal(err)
	}
	bad := slices.Clone(good)
	bad[10] ^= 0x20
	if err := os.WriteFile(mp, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(ctx, "c"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open of the damaged clone: %v, want ErrCorrupt", err)
	}
	if err := s.Delete(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The operator repairs the clone's metadata.
	if err := os.WriteFile(mp, good, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err = s.Open(ctx, "c")
	if err != nil {
		t.Fatalf("Open of the repaired clone: %v", err)
	}
	checkCrashBlocks(t, c, 2)
	// v's own head is freed now, by the clean open (its .free marker).
	pool, orphaned := layerPool(t, dir)
	if len(pool) != 6 || len(orphaned) != 0 {
		t.Fatalf("after the clean open: layers/ %v, orphaned/ %v; want the clone's three layers", pool, orphaned)
	}
}

// TestMetaUncertain checks a metadata update whose directory sync fails
// after the rename (atomicfile.ErrUncertain): the store keeps every layer
// either chain needs and the volume refuses I/O until reopened. Before,
// Snapshot and Revert released the new head as if the update had not
// happened, deleting the files the metadata on disk names, so the volume
// no longer opened.
func TestMetaUncertain(t *testing.T) {
	injected := errors.New("injected EIO")
	for _, tc := range []struct {
		name   string
		op     func(v *Volume) error
		blocks int // blocks of crashTwoSnapshots the volume holds after reopening
	}{
		{"snapshot", func(v *Volume) error { return v.Snapshot(t.Context(), "c") }, 2},
		{"revert", func(v *Volume) error { return v.Revert(t.Context(), "a") }, 1},
		{"delete-snapshot", func(v *Volume) error { return v.DeleteSnapshot(t.Context(), "a") }, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, _ := crashTwoSnapshots(t)
			s, err := OpenStore(dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			v, err := s.Open(t.Context(), "v")
			if err != nil {
				t.Fatal(err)
			}
			writeFileAtomic = func(dir, name string, b []byte) error {
				if err := atomicfile.Write(filepath.Join(dir, name), b); err != nil {
					return err
				}
				return fmt.Errorf("%w: %w", atomicfile.ErrUncertain, injected)
			}
			err = tc.op(v)
			writeFileAtomic = func(dir, name string, b []byte) error { return atomicfile.Write(filepath.Join(dir, name), b) }
			if !errors.Is(err, injected) {
				t.Fatalf("%s with an uncertain metadata update: %v", tc.name, err)
			}
			if _, err := v.WriteAt(make([]byte, BlockSize), 0); !errors.Is(err, injected) {
				t.Fatalf("write after an uncertain metadata update: %v, want the volume failed", err)
			}
			_ = v.Close()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			v, err = crashReopen(t, dir)
			if err != nil {
				t.Fatalf("reopen after an uncertain metadata update: %v", err)
			}
			checkCrashBlocks(t, v, tc.blocks)
		})
	}
}
