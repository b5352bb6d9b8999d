package backupd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestManifestTagsBounded: a manifest whose tags object is far larger than
// 64 tags can be is refused before a map of it is built. Before, a hostile
// manifest near the size limit (about 537 MiB) made every List, Prune, GC
// and Verify build a map of tens of millions of entries first.
func TestManifestTagsBounded(t *testing.T) {
	var sb strings.Builder
	sb.WriteString(`{"format":1,"volume":"v","id":"0123456789abcdef0123456789abcdef","created":"2026-01-01T00:00:00Z","size":8192,"chunk_size":8192,"page_chunks":256,"encrypted":false,"digest":"","pages":[],"tags":{`)
	const n = 200000
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `"t%07d":""`, i)
	}
	sb.WriteString(`},"stats":{}}`)
	b := []byte(sb.String())
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := DecodeManifest(b)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("DecodeManifest with %d tags: %v, want ErrCorrupt", n, err)
	}
	// The JSON decoder's buffer holds the object (growing by doubling:
	// about 3x its size); the map of 200,000 tags took 12x.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 5*uint64(len(b)) {
		t.Errorf("DecodeManifest allocated %d bytes for a %d-byte manifest it refuses", alloc, len(b))
	}
}

// TestManifestMAC: an encrypted backup's manifest is authenticated under
// the repository key. Someone able to write to the target but without the
// key cannot relabel an authentic backup as another volume's, swap map
// pages and digests between backups, change its tags or strip the MAC:
// restore refuses the manifest, naming it. Before, every one of these
// restored: the pages, chunks and digest were all authentic, only not the
// volume's. A manifest written before MACs (none) reads only when
// unauthenticated backups are allowed.
func TestManifestMAC(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	k := testKey(t)
	r := Open(NewFSTarget(t, dir), &Options{Key: k, Logger: testLogger(t)})
	rng := rand.New(rand.NewPCG(31, 32))
	const size = 3 << 20
	dataA, dataB := RandomData(rng, size), RandomData(rng, size)
	a, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: &memSource{data: dataA}, Tags: Tags{"system": "one"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.Backup(ctx, BackupOptions{Volume: "vol-b", Snapshot: "s1", Source: &memSource{data: dataB}})
	if err != nil {
		t.Fatal(err)
	}
	if a.Manifest.MAC == "" || b.Manifest.MAC == "" || a.Manifest.MAC == b.Manifest.MAC {
		t.Fatalf("MACs %q and %q: want one per encrypted manifest", a.Manifest.MAC, b.Manifest.MAC)
	}
	read := func(key string) map[string]any {
		raw, err := os.ReadFile(filepath.Join(dir, key))
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	mA, mB := read(a.ManifestKey), read(b.ManifestKey)
	for _, tc := range []struct {
		name string
		key  string // where the changed manifest is written
		edit func(m map[string]any)
		from map[string]any
		// want: the error restore returns (nil: restores want data)
		want error
		data []byte
	}{
		{name: "authentic", key: b.ManifestKey, from: mB, edit: func(map[string]any) {}, data: dataB},
		{name: "relabelled as another volume", key: ManifestKey("vol-b", a.ID), from: mA, edit: func(m map[string]any) { m["volume"] = "vol-b" }, want: ErrCorrupt},
		{name: "pages and digest of another backup", key: b.ManifestKey, from: mB, edit: func(m map[string]any) { m["pages"], m["digest"] = mA["pages"], mA["digest"] }, want: ErrCorrupt},
		{name: "tags changed", key: a.ManifestKey, from: mA, edit: func(m map[string]any) { m["tags"] = map[string]any{"system": "two"} }, want: ErrCorrupt},
		{name: "snapshot renamed", key: b.ManifestKey, from: mB, edit: func(m map[string]any) { m["snapshot"] = "s9" }, want: ErrCorrupt},
		{name: "another backup's MAC", key: b.ManifestKey, from: mB, edit: func(m map[string]any) { m["mac"] = mA["mac"] }, want: ErrCorrupt},
		{name: "MAC removed", key: b.ManifestKey, from: mB, edit: func(m map[string]any) { delete(m, "mac") }, want: ErrKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := maps.Clone(tc.from)
			tc.edit(m)
			raw, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, tc.key)
			old, _ := os.ReadFile(path)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, raw, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if old == nil {
					os.Remove(path)
				} else {
					os.WriteFile(path, old, 0o644)
				}
			})
			dst := &memDest{data: make([]byte, size)}
			_, err = r.Restore(ctx, tc.key, dst, RestoreOptions{})
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				MustEqual(t, "restored", dst.data, tc.data)
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "MAC") {
				t.Fatalf("restore of %s: %v, want %v naming the MAC", tc.key, err, tc.want)
			}
			if rep, err := r.Verify(ctx, []string{tc.key}, VerifyOptions{}); err == nil || rep == nil || len(rep.BadBackups) != 1 || !strings.Contains(rep.BadBackups[0].Err, "MAC") {
				t.Fatalf("verify of %s: %+v, %v; want it reported bad for its MAC", tc.key, rep, err)
			}
		})
	}
	// Stripped of its MAC, an authentic manifest reads where
	// unauthenticated backups are allowed (those written before MACs).
	m := maps.Clone(mB)
	delete(m, "mac")
	raw, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, b.ManifestKey), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	lax := Open(NewFSTarget(t, dir), &Options{Key: k, AllowUnencrypted: true, Logger: testLogger(t)})
	dst := &memDest{data: make([]byte, size)}
	if _, err := lax.Restore(ctx, b.ManifestKey, dst, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	MustEqual(t, "restored without a MAC, allowed", dst.data, dataB)
}

// The MAC covers every field: changing any one changes it.
func TestManifestMACCoversEveryField(t *testing.T) {
	t.Parallel()
	k := testKey(t)
	base := Manifest{Format: manifestFormat, Version: 1, Volume: "v", ID: "0123456789abcdef0123456789abcdef", Snapshot: "s",
		SnapshotCreated: time.Unix(100, 5), Parent: "fedcba9876543210fedcba9876543210", Created: time.Unix(200, 7), Size: 8192, ChunkSize: 8192,
		PageChunks: 1024, Encrypted: true, KeyID: k.ID(), Digest: strings.Repeat("ab", 32), Pages: []string{strings.Repeat("cd", 32)},
		Tags: Tags{"a": "b"}, Stats: Stats{1, 2, 3, 4, 5, 6}}
	want := k.manifestMAC(&base)
	// Encoding-independent: the same instant in another zone.
	same := base
	same.Created = base.Created.In(time.FixedZone("x", 3600))
	if got := k.manifestMAC(&same); got != want {
		t.Errorf("the same instant in another zone changed the MAC")
	}
	edits := map[string]func(m *Manifest){
		"format": func(m *Manifest) { m.Format += "x" }, "version": func(m *Manifest) { m.Version++ },
		"volume": func(m *Manifest) { m.Volume = "w" }, "id": func(m *Manifest) { m.ID = strings.Repeat("0", 32) },
		"snapshot": func(m *Manifest) { m.Snapshot = "t" }, "snapshot_created": func(m *Manifest) { m.SnapshotCreated = time.Time{} },
		"parent": func(m *Manifest) { m.Parent = "" }, "created": func(m *Manifest) { m.Created = m.Created.Add(1) },
		"size": func(m *Manifest) { m.Size *= 2 }, "chunk_size": func(m *Manifest) { m.ChunkSize *= 2 },
		"page_chunks": func(m *Manifest) { m.PageChunks = 256 }, "encrypted": func(m *Manifest) { m.Encrypted = false },
		"key_id": func(m *Manifest) { m.KeyID = "x" }, "digest": func(m *Manifest) { m.Digest = strings.Repeat("ef", 32) },
		"pages": func(m *Manifest) { m.Pages = append(m.Pages, m.Pages[0]) }, "tags": func(m *Manifest) { m.Tags = Tags{"a": "c"} },
		"tag key": func(m *Manifest) { m.Tags = Tags{"b": "b"} }, "stats": func(m *Manifest) { m.Stats.PagesUploaded++ },
		// Length-prefixed: moving a byte between fields changes it.
		"boundary": func(m *Manifest) { m.Volume, m.ID = "v0", "123456789abcdef0123456789abcdef" },
	}
	for name, edit := range edits {
		m := base
		m.Pages = slices.Clone(base.Pages)
		edit(&m)
		if k.manifestMAC(&m) == want {
			t.Errorf("changing %s leaves the MAC as it was", name)
		}
	}
	other, err := NewKey(bytes.Repeat([]byte{8}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	if other.manifestMAC(&base) == want {
		t.Error("another key gives the same MAC")
	}
}

// TestUnauthenticatedManifests: in a repository with a key, a manifest
// the key does not authenticate is neither listed nor the latest: one
// copied from an authentic backup with a later date, another key_id and
// no MAC was taken as the volume's newest backup, and every incremental
// on it failed. GC still counts what such manifests reference (keeping
// more is safe) and Delete still deletes one, so a manifest written
// before MACs blocks neither.
func TestUnauthenticatedManifests(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	r := Open(NewFSTarget(t, dir), &Options{Key: testKey(t), Logger: testLogger(t)})
	a, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: &memSource{data: RandomData(rand.New(rand.NewPCG(41, 42)), 1<<20)}})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, a.ManifestKey))
	if err != nil {
		t.Fatal(err)
	}
	plant := func(id string, edit func(m map[string]any)) {
		t.Helper()
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		m["id"] = id
		delete(m, "mac")
		edit(m)
		b, _ := json.Marshal(m)
		if err := os.WriteFile(filepath.Join(dir, ManifestKey("vol-a", id)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const foreign, legacy = "11111111111111111111111111111111", "22222222222222222222222222222222"
	plant(foreign, func(m map[string]any) {
		m["key_id"] = "0011223344556677"
		m["created"] = a.Manifest.Created.Add(time.Hour).Format(time.RFC3339Nano)
	})
	plant(legacy, func(m map[string]any) { m["created"] = a.Manifest.Created.Add(-time.Hour).Format(time.RFC3339Nano) })

	l, err := r.ListManifests(ctx, "vol-a")
	if err != nil || len(l.Backups) != 1 || l.Backups[0].ID != a.ID || len(l.Skipped) != 2 {
		t.Fatalf("listing: %+v, %v; want only %s, two skipped", l, err, a.ID)
	}
	if latest, err := r.Latest(ctx, "vol-a"); err != nil || latest.ID != a.ID {
		t.Fatalf("latest: %+v, %v; want %s", latest, err, a.ID)
	}
	if _, err := r.LoadManifest(ctx, ManifestKey("vol-a", foreign)); !errors.Is(err, ErrKey) {
		t.Fatalf("the manifest with another key id: %v, want ErrKey", err)
	}
	if err := r.Delete(ctx, "vol-a", foreign); err != nil {
		t.Fatalf("deleting the manifest with another key id: %v", err)
	}
	if rep, err := r.GC(ctx, GCOptions{DryRun: true}); err != nil {
		t.Fatalf("GC past a manifest without a MAC: %+v, %v", rep, err)
	}
	if err := r.Delete(ctx, "vol-a", legacy); err != nil {
		t.Fatalf("deleting a manifest without a MAC: %v", err)
	}
}
