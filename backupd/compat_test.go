package backupd

import (
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testdata/v1repo is a repository written by the engine before records
// could carry flagLeafID (commit 6990d83): volume "enc" backed up with
// testKey, volume "plain" without a key, both of compatData(). Newer code
// must keep restoring, verifying and building incrementals on it; "enc"'s
// manifest predates manifest MACs, so only with AllowUnencrypted.

const compatSize = 3 << 20

// compatData is the volume of testdata/v1repo: 64 KiB random, 64 KiB
// compressible, zeros, and 64 KiB random at the start of the second page.
func compatData() []byte {
	rng := rand.New(rand.NewPCG(71, 72))
	d := make([]byte, compatSize)
	copy(d, RandomData(rng, 64<<10))
	c := RandomData(rng, 64<<10)
	for i := 0; i < len(c); i += 4096 {
		clear(c[i+1024 : i+4096])
	}
	copy(d[64<<10:], c)
	copy(d[2<<20:], RandomData(rng, 64<<10))
	return d
}

// copyTree copies directory src to dst.
func copyTree(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestReadsV1Repository(t *testing.T) {
	t.Parallel()
	data := compatData()
	for _, tc := range []struct {
		volume string
		key    bool
	}{
		{volume: "enc", key: true},
		{volume: "plain"},
	} {
		t.Run(tc.volume, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			copyTree(t, "testdata/v1repo", dir)
			var k *Key
			if tc.key {
				k = testKey(t)
			}
			ctx := t.Context()
			if tc.key {
				// Its manifest predates manifest MACs: refused unless
				// unauthenticated backups are allowed.
				r := Open(NewFSTarget(t, dir), &Options{Key: k, Logger: testLogger(t)})
				if _, err := r.LoadManifest(ctx, "backups/enc/28449f3b6db6c4b6db9d4421f3394912"); !errors.Is(err, ErrKey) || !strings.Contains(err.Error(), "no MAC") {
					t.Fatalf("manifest without a MAC: %v, want ErrKey saying so", err)
				}
				if l, err := r.ListManifests(ctx, tc.volume); err != nil || len(l.Backups) != 0 || len(l.Skipped) != 1 {
					t.Fatalf("listing with a manifest without a MAC: %+v, %v; want it skipped", l, err)
				}
			}
			r := Open(NewFSTarget(t, dir), &Options{Key: k, AllowUnencrypted: tc.key, Logger: testLogger(t)})
			old, err := r.Latest(ctx, tc.volume)
			if err != nil {
				t.Fatal(err)
			}
			restore := func(key string, want []byte) {
				t.Helper()
				dst := &memDest{data: make([]byte, len(want))}
				if _, err := r.Restore(ctx, key, dst, RestoreOptions{}); err != nil {
					t.Fatalf("restore %s: %v", key, err)
				}
				MustEqual(t, "restored "+key, dst.data, want)
			}
			restore(old.Key, data)

			// An incremental on the old backup mixes old records (the
			// unchanged chunks) with new ones.
			next := append([]byte(nil), data...)
			rng := rand.New(rand.NewPCG(73, 74))
			var changed []Extent
			for _, off := range []int64{4096, 96 << 10, 1 << 20, 2<<20 + 8192} {
				copy(next[off:], RandomData(rng, 4096))
				changed = append(changed, Extent{Offset: off, Length: 4096})
			}
			inc, err := r.Backup(ctx, BackupOptions{Volume: tc.volume, Snapshot: "s2", Source: &memSource{data: next}, Parent: old.ID, Changed: changed})
			if err != nil {
				t.Fatal(err)
			}
			if inc.Stats.ChunksNew != 4 {
				t.Errorf("incremental stored %d new chunks, want 4", inc.Stats.ChunksNew)
			}
			// It keeps its parent's pages of 256 chunks, rewriting only the
			// ones that changed.
			if inc.Manifest.PageChunks != 256 || inc.Stats.PagesUploaded > 4 {
				t.Errorf("incremental of a 256-chunk-page backup has pages of %d, %d uploaded", inc.Manifest.PageChunks, inc.Stats.PagesUploaded)
			}
			restore(inc.ManifestKey, next)
			// A full backup of the old data stores new records of it.
			full, err := r.Backup(ctx, BackupOptions{Volume: tc.volume, Snapshot: "s3", Source: &memSource{data: data}, Full: true})
			if err != nil {
				t.Fatal(err)
			}
			if full.Digest != old.Digest {
				t.Errorf("full backup digest %s, old backup's %s", full.Digest, old.Digest)
			}
			if full.Manifest.PageChunks != PageChunks {
				t.Errorf("full backup has pages of %d chunks, want %d", full.Manifest.PageChunks, PageChunks)
			}
			restore(full.ManifestKey, data)
			rep, err := r.Verify(ctx, []string{old.Key, inc.ManifestKey, full.ManifestKey}, VerifyOptions{ReadData: true})
			if err != nil {
				t.Fatal(err)
			}
			if !rep.OK() || len(rep.Backups) != 3 {
				t.Fatalf("verify: %+v", rep)
			}
		})
	}
}
