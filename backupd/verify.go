package backupd

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-block/strata/plugins"
)

// VerifyOptions tune Verify.
type VerifyOptions struct {
	// ReadData fetches and re-hashes every referenced chunk; without it
	// Verify checks the manifests, the map pages, that every chunk is in a
	// pack index and that every such pack exists.
	ReadData bool
	// Parallel is the number of Gets in flight (default 4).
	Parallel int
	// Progress, if set, receives progress events.
	Progress ProgressFunc
}

// BackupRef names one backup.
type BackupRef struct {
	Volume string `json:"volume"`
	ID     string `json:"id"`
}

// BadChunk is a chunk that failed a check, with every verified backup that
// references it (dedup: one bad chunk can break many backups).
type BadChunk struct {
	ID      string      `json:"id"`
	Pack    string      `json:"pack,omitempty"`
	Err     string      `json:"error"`
	Missing bool        `json:"missing,omitempty"` // absent rather than damaged
	Backups []BackupRef `json:"backups"`
	err     error
}

// BadBackup is a backup whose manifest or map pages fail to load.
type BadBackup struct {
	Key string `json:"key"`
	Err string `json:"error"`
	err error
}

// VerifyReport is Verify's result.
type VerifyReport struct {
	Backups    []BackupRef `json:"backups"`
	Chunks     int64       `json:"chunks"`
	BytesRead  int64       `json:"bytes_read"`
	BadChunks  []BadChunk  `json:"bad_chunks,omitempty"`
	BadBackups []BadBackup `json:"bad_backups,omitempty"`
	// BadIndexes are pack indexes on the target that do not decode. Their
	// chunks cannot be found: a verified backup referencing one has it
	// among BadChunks (missing), and a Full backup heals it. On their own
	// they are a warning, not a failure of the backups verified: one bad
	// index no verified backup needs failed every verify for good, since
	// GC keeps a pack whose index does not decode.
	BadIndexes []string `json:"bad_indexes,omitempty"`
}

// OK reports whether the backups verified are sound: no bad chunk and no
// bad backup (BadIndexes alone is a warning).
func (v *VerifyReport) OK() bool {
	return len(v.BadChunks) == 0 && len(v.BadBackups) == 0
}

// Verify checks the backups under manifestKeys (nil: every backup on the
// target). It returns the report and, if anything is bad, an error
// wrapping ErrCorrupt or ErrMissing that names the first bad chunk and the
// volumes it affects; every bad chunk is in the report.
func (r *Repository) Verify(ctx context.Context, manifestKeys []string, opts VerifyOptions) (*VerifyReport, error) {
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	if manifestKeys == nil {
		all, err := r.manifestKeys(ctx)
		if err != nil {
			return nil, err
		}
		manifestKeys = all
	}
	idx, err := r.loadIndexFrom(ctx, true)
	if err != nil {
		return nil, fmt.Errorf("verify: loading the chunk index: %w", err)
	}
	rep := &VerifyReport{BadIndexes: idx.badIndexes}
	type ref struct {
		backups []int
		enc     bool
		leaf    ChunkID
		length  int
	}
	refs := map[ChunkID]*ref{}
	for _, key := range manifestKeys {
		m, err := r.LoadManifest(ctx, key)
		if err == nil {
			_, err = r.keyFor(m)
		}
		if err != nil {
			if !backupDamage(err) {
				return nil, fmt.Errorf("verify: %w", err)
			}
			rep.BadBackups = append(rep.BadBackups, BadBackup{Key: key, Err: err.Error(), err: err})
			continue
		}
		bi := len(rep.Backups)
		rep.Backups = append(rep.Backups, BackupRef{Volume: m.Volume, ID: m.ID})
		k, _ := r.keyFor(m)
		// The digest of the map's leaves must be the manifest's: a page
		// list reordered or swapped would pass every chunk check, and only
		// restore would find it (ErrMismatch).
		dg := newDigest(m.Size, m.ChunkSize)
		pagesOK := true
		for pr := range r.pageStream(ctx, m, k, 0, 8) {
			if pr.err != nil {
				if !backupDamage(pr.err) {
					return nil, fmt.Errorf("verify: %w", pr.err)
				}
				rep.BadBackups = append(rep.BadBackups, BadBackup{Key: key, Err: pr.err.Error(), err: pr.err})
				pagesOK = false
				break
			}
			for c, id := range pr.p.IDs {
				chunk := int64(pr.i)*int64(m.PageChunks) + int64(c)
				dg.add(chunk, pr.p.leaf(c))
				if id.IsZero() {
					continue
				}
				x := refs[id]
				if x == nil {
					x = &ref{enc: m.Encrypted, leaf: pr.p.leaf(c), length: m.chunkLen(chunk)}
					refs[id] = x
				}
				if n := len(x.backups); n == 0 || x.backups[n-1] != bi {
					x.backups = append(x.backups, bi)
				}
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if got := dg.hex(); pagesOK && got != m.Digest {
			err := fmt.Errorf("volume %q backup %s: its map pages give digest %s, the manifest says %s: %w", m.Volume, m.ID, got, m.Digest, ErrMismatch)
			rep.BadBackups = append(rep.BadBackups, BadBackup{Key: key, Err: err.Error(), err: err})
		}
	}
	rep.Chunks = int64(len(refs))
	var mu sync.Mutex
	bad := func(id ChunkID, pack string, err error) {
		if !strings.Contains(err.Error(), id.String()) {
			err = fmt.Errorf("chunk %s: %w", id, err)
		}
		mu.Lock()
		defer mu.Unlock()
		bc := BadChunk{ID: id.String(), Pack: pack, Err: err.Error(), Missing: errors.Is(err, ErrMissing), err: err}
		for _, b := range refs[id].backups {
			bc.Backups = append(bc.Backups, rep.Backups[b])
		}
		rep.BadChunks = append(rep.BadChunks, bc)
	}
	// Presence: in an index, and the pack exists.
	var items []fetchItem
	usedPacks := map[int32]bool{}
	for id := range refs {
		loc, ok := idx.chunks[id]
		if !ok {
			bad(id, "", fmt.Errorf("chunk %s is in no pack index: %w", id, ErrMissing))
			continue
		}
		usedPacks[loc.pack] = true
		items = append(items, fetchItem{id: id, loc: loc, leaf: refs[id].leaf})
	}
	packNums := slices.Sorted(func(yield func(int32) bool) {
		for p := range usedPacks {
			if !yield(p) {
				return
			}
		}
	})
	missingPack := map[int32]bool{}
	info, err := r.t.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("verify: target info: %w", err)
	}
	batch := max(1, min(info.MaxBatch, plugins.MaxBatch))
	for i := 0; i < len(packNums); i += batch {
		part := packNums[i:min(i+batch, len(packNums))]
		keys := make([]string, len(part))
		for j, p := range part {
			keys[j] = packKey(idx.packs[p])
		}
		has, err := r.t.Has(ctx, keys)
		if err != nil {
			return nil, fmt.Errorf("verify: checking packs: %w", err)
		}
		for j, h := range has {
			if !h {
				missingPack[part[j]] = true
			}
		}
	}
	kept := items[:0]
	for _, it := range items {
		if missingPack[it.loc.pack] {
			// Another copy (from a healing Full backup) may exist.
			if alt, ok, err := r.presentAlt(ctx, idx, it.id, missingPack); err != nil {
				return nil, fmt.Errorf("verify: %w", err)
			} else if ok {
				it.loc = alt
				kept = append(kept, it)
				continue
			}
			p := idx.packs[it.loc.pack]
			bad(it.id, p.String(), fmt.Errorf("chunk %s: pack %s is missing: %w", it.id, p, ErrMissing))
			continue
		}
		kept = append(kept, it)
	}
	items = kept
	if opts.ReadData {
		var read atomic.Int64
		var done atomic.Int64
		// Progress is called from one goroutine at a time (ProgressFunc);
		// the ranges are checked by several.
		var progressMu sync.Mutex
		ranges := planFetch(idx, items)
		var total int64 // the bytes the ranges read: the progress bar's end
		for _, fr := range ranges {
			total += fr.end - fr.off
		}
		err := forEach(ctx, len(ranges), opts.Parallel, func(ctx context.Context, i int) error {
			fr := ranges[i]
			err := r.fetchRange(ctx, fr, &read, func(it fetchItem, rec []byte, err error) error {
				x := refs[it.id]
				var k *Key
				if x.enc {
					k = r.opts.Key
				}
				check := func(rec []byte) ([]byte, error) {
					p, err := decodeRecord(rec, k, it.id, MaxChunkSize)
					if err == nil && len(p) != x.length {
						err = fmt.Errorf("chunk %s is %d bytes, the map needs %d: %w", it.id, len(p), x.length, ErrCorrupt)
					}
					if err == nil && k != nil && ChunkID(sha256.Sum256(p)) != x.leaf {
						err = fmt.Errorf("chunk %s: plaintext hash differs from the map's: %w", it.id, ErrCorrupt)
					}
					return p, err
				}
				if err == nil {
					_, err = check(rec)
				}
				if isDamage(err) {
					_, err = r.tryAlts(ctx, idx, it.id, err, check)
				}
				switch {
				case err != nil && !isDamage(err):
					return fmt.Errorf("chunk %s: %w", it.id, err) // the target failed, not the chunk
				case err != nil:
					bad(it.id, fr.pack.String(), err)
				}
				done.Add(1)
				return nil
			})
			if opts.Progress != nil {
				progressMu.Lock()
				opts.Progress(Progress{Op: "verify", Phase: PhaseVerify, BytesTotal: total, BytesScanned: read.Load(), Chunks: done.Load(), Time: time.Now()})
				progressMu.Unlock()
			}
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
		rep.BytesRead = read.Load()
	}
	slices.SortFunc(rep.BadChunks, func(a, b BadChunk) int { return strings.Compare(a.ID, b.ID) })
	if rep.OK() {
		if len(rep.BadIndexes) > 0 {
			r.log.Warn("verify: pack indexes on the target do not decode; no verified backup references their chunks", "count", len(rep.BadIndexes), "first", rep.BadIndexes[0])
		}
		return rep, nil
	}
	if len(rep.BadChunks) > 0 {
		b := rep.BadChunks[0]
		vols := map[string]bool{}
		for _, bb := range rep.BadChunks {
			for _, ref := range bb.Backups {
				vols[ref.Volume] = true
			}
		}
		return rep, fmt.Errorf("verify: %d bad chunks in %d volumes (%v); first referenced by %v: %w",
			len(rep.BadChunks), len(vols), slices.Sorted(maps.Keys(vols)), b.Backups, b.err)
	}
	return rep, fmt.Errorf("verify: %d backups are bad (do not load, or their map does not give their digest); first: %w", len(rep.BadBackups), rep.BadBackups[0].err)
}

// backupDamage reports whether err, from loading a manifest or a map page,
// makes the backup bad (isDamage, a manifest that is not there, a key that
// is not a manifest's) rather than the target failing to answer.
func backupDamage(err error) bool {
	return isDamage(err) || errors.Is(err, plugins.ErrNotFound) || errors.Is(err, ErrInvalid)
}

// presentAlt returns a copy of chunk id in a pack that exists, if any.
func (r *Repository) presentAlt(ctx context.Context, idx *chunkIndex, id ChunkID, missing map[int32]bool) (chunkLoc, bool, error) {
	for _, loc := range idx.alts[id] {
		if missing[loc.pack] {
			continue
		}
		has, err := r.t.Has(ctx, []string{packKey(idx.packs[loc.pack])})
		if err != nil {
			return chunkLoc{}, false, err
		}
		if has[0] {
			return loc, true, nil
		}
		missing[loc.pack] = true
	}
	return chunkLoc{}, false, nil
}
