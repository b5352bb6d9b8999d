package backupd

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/strata-block/strata/plugins"
)

// manifestKeys lists every manifest key on the target.
func (r *Repository) manifestKeys(ctx context.Context) ([]string, error) {
	var keys []string
	for o, err := range r.t.List(ctx, prefixBackups, "") {
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", prefixBackups, err)
		}
		if _, _, err := ParseManifestKey(o.Key); err != nil {
			r.log.Warn("ignoring foreign object", "key", o.Key)
			continue
		}
		keys = append(keys, o.Key)
	}
	return keys, nil
}

func sortInfos(s []BackupInfo) {
	slices.SortFunc(s, func(a, b BackupInfo) int {
		return cmp.Or(strings.Compare(a.Volume, b.Volume), a.Created.Compare(b.Created), strings.Compare(a.ID, b.ID))
	})
}

// Delete removes backup id of volume: its manifest only; GC reclaims the
// chunks no other backup references. A backup that does not exist is
// plugins.ErrNotFound; one a system backup holds is ErrHeld.
func (r *Repository) Delete(ctx context.Context, volume, id string) error {
	return r.delete(ctx, volume, id, false)
}

// DeleteHeld is Delete for the coordinator: it removes a backup even when
// it carries TagSystem. The caller checks that no system manifest names
// it any more.
func (r *Repository) DeleteHeld(ctx context.Context, volume, id string) error {
	return r.delete(ctx, volume, id, true)
}

func (r *Repository) delete(ctx context.Context, volume, id string, held bool) error {
	key := ManifestKey(volume, id)
	if _, _, err := ParseManifestKey(key); err != nil {
		return err
	}
	m, err := r.LoadManifest(ctx, key)
	switch {
	case errors.Is(err, plugins.ErrNotFound):
		return fmt.Errorf("delete backup %s of volume %q: %w", id, volume, plugins.ErrNotFound)
	case err == nil && !held && m.Tags[TagSystem] != "":
		return fmt.Errorf("delete backup %s of volume %q: system backup %s names it; remove the system backup instead (strata system backup rm %s): %w",
			id, volume, m.Tags[TagSystem], m.Tags[TagSystem], ErrHeld)
	case err != nil && !errors.Is(err, ErrCorrupt):
		// A corrupt manifest can be deleted; anything else (a target
		// that does not answer) stops here.
		return fmt.Errorf("delete backup %s of volume %q: %w", id, volume, err)
	}
	if err := r.t.Delete(ctx, []string{key}); err != nil {
		return fmt.Errorf("delete backup %s of volume %q: %w", id, volume, err)
	}
	r.log.Info("backup deleted", "op", "delete", "volume", volume, "id", id)
	return nil
}

// PruneOptions select the backups to keep, per volume: the KeepLast most
// recent and every one created within KeepWithin of the volume's newest
// backup (as restic's --keep-within: a volume whose backups stopped is not
// emptied by time passing). The rest are deleted (their manifests; GC
// reclaims the data).
type PruneOptions struct {
	Volume     string // "" for every volume
	KeepLast   int
	KeepWithin time.Duration
	DryRun     bool
}

// PruneResult lists what Prune kept and deleted (or would delete).
type PruneResult struct {
	Kept    []BackupInfo `json:"kept"`
	Deleted []BackupInfo `json:"deleted"`
	// Held were kept because a system backup holds them (TagSystem);
	// they count towards neither KeepLast nor KeepWithin.
	Held []BackupInfo `json:"held,omitempty"`
}

// Prune applies a retention policy. At least one of KeepLast and
// KeepWithin must be set: a policy that keeps nothing is refused.
func (r *Repository) Prune(ctx context.Context, opts PruneOptions) (*PruneResult, error) {
	if opts.KeepLast <= 0 && opts.KeepWithin <= 0 {
		return nil, fmt.Errorf("prune: set keep-last or keep-within (a policy that keeps nothing is refused): %w", ErrInvalid)
	}
	if opts.KeepLast < 0 || opts.KeepWithin < 0 {
		return nil, fmt.Errorf("prune: negative keep-last or keep-within: %w", ErrInvalid)
	}
	all, err := r.List(ctx, opts.Volume)
	if err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	res := &PruneResult{}
	byVol := map[string][]BackupInfo{}
	for _, b := range all {
		if b.Tags[TagSystem] != "" {
			res.Held = append(res.Held, b)
			continue
		}
		byVol[b.Volume] = append(byVol[b.Volume], b)
	}
	for _, vol := range slices.Sorted(func(y func(string) bool) {
		for v := range byVol {
			if !y(v) {
				return
			}
		}
	}) {
		bs := byVol[vol]
		slices.Reverse(bs) // newest first
		for i, b := range bs {
			if i < opts.KeepLast || (opts.KeepWithin > 0 && bs[0].Created.Sub(b.Created) <= opts.KeepWithin) {
				res.Kept = append(res.Kept, b)
				continue
			}
			res.Deleted = append(res.Deleted, b)
			if opts.DryRun {
				continue
			}
			if err := r.Delete(ctx, b.Volume, b.ID); err != nil && !errors.Is(err, plugins.ErrNotFound) {
				return res, fmt.Errorf("prune: %w", err)
			}
		}
	}
	return res, nil
}

// GCOptions tune GC.
type GCOptions struct {
	// Grace is how long a pack or page stays marked before it may be
	// deleted; it must be longer than every backup's MaxDuration plus the
	// time a Put takes (default 2×DefaultMaxDuration).
	Grace time.Duration
	// DryRun marks nothing and deletes nothing; the report says what a
	// run would do.
	DryRun bool
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// GCReport counts what a GC run did.
type GCReport struct {
	Manifests     int   `json:"manifests"`
	PacksLive     int   `json:"packs_live"`
	PacksMarked   int   `json:"packs_marked"`
	PacksUnmarked int   `json:"packs_unmarked"`
	PacksDeleted  int   `json:"packs_deleted"`
	PagesMarked   int   `json:"pages_marked"`
	PagesUnmarked int   `json:"pages_unmarked"`
	PagesDeleted  int   `json:"pages_deleted"`
	BytesDeleted  int64 `json:"bytes_deleted"`
	// IndexesDeleted counts pack indexes that outlived their pack (Put
	// by a backup that overran its deadline after the pack was swept).
	IndexesDeleted int `json:"indexes_deleted"`
}

type gcMark struct {
	Marked time.Time `json:"marked"`
}

func gcKey(kind string, id ChunkID) string { return prefixGC + kind + "/" + id.String() }

// GC deletes packs and map pages no backup references, in two phases
// (FORMAT.md, "Garbage collection"): an unreferenced object is first
// marked (gc/packs/<id>, gc/maps/<id>, holding the time); a later run
// deletes it only if it is still unreferenced and was marked at least
// Grace before that run started, and unmarks it if it is referenced again.
// Backups never dedup against a marked pack or reuse a marked page, so a
// backup that could reference a deleted object must have listed gc/
// before the mark, and so wrote its manifest before the run that deletes.
//
// GC refuses to run if any manifest or map page fails to load: it could
// not tell what that backup references.
func (r *Repository) GC(ctx context.Context, opts GCOptions) (*GCReport, error) {
	if opts.Grace <= 0 {
		opts.Grace = 2 * DefaultMaxDuration
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	start := opts.Now()
	rep := &GCReport{}
	log := r.log.With("op", "gc")

	// Marks first: every mark old enough now was written before this run.
	marks := map[string]time.Time{}
	for o, err := range r.t.List(ctx, prefixGC, "") {
		if err != nil {
			return nil, fmt.Errorf("gc: list %s: %w", prefixGC, err)
		}
		b, err := r.getAll(ctx, o.Key, 4096)
		if errors.Is(err, plugins.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("gc: %w", err)
		}
		var mk gcMark
		if err := json.Unmarshal(b, &mk); err != nil || mk.Marked.IsZero() {
			log.Warn("unreadable gc mark; marking again", "key", o.Key)
			mk.Marked = start
		}
		marks[o.Key] = mk.Marked
	}

	// What the backups reference, listed after start.
	keys, err := r.manifestKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	chunkRefs := map[ChunkID]bool{}
	pageRefs := map[ChunkID]bool{}
	for _, key := range keys {
		m, err := r.LoadManifest(ctx, key)
		if errors.Is(err, plugins.ErrNotFound) {
			continue // deleted since the listing
		}
		if err == nil {
			var k *Key
			if k, err = r.keyFor(m); err == nil {
				for pr := range r.pageStream(ctx, m, k, 0, 8) {
					if err = pr.err; err != nil {
						break
					}
					id, _ := ParseChunkID(m.Pages[pr.i])
					pageRefs[id] = true
					for _, c := range pr.p.IDs {
						if !c.IsZero() {
							chunkRefs[c] = true
						}
					}
				}
				if err == nil {
					err = ctx.Err()
				}
			}
		}
		if err != nil {
			return nil, fmt.Errorf("gc: refusing to run: backup %s does not load, so what it references is unknown (delete it or fix it first): %w", key, err)
		}
		rep.Manifests++
	}

	// Packs: referenced if any chunk in their index is; a pack whose index
	// does not decode is kept.
	live := map[ChunkID]bool{}
	var indexed []ChunkID
	for o, err := range r.t.List(ctx, prefixIndex, "") {
		if err != nil {
			return nil, fmt.Errorf("gc: list %s: %w", prefixIndex, err)
		}
		id, err := ParseChunkID(strings.TrimPrefix(o.Key, prefixIndex))
		if err != nil {
			continue
		}
		indexed = append(indexed, id)
		b, err := r.getAll(ctx, o.Key, indexHeadSize+indexEntrySize*maxIndexCount+8)
		if errors.Is(err, plugins.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("gc: %w", err)
		}
		es, err := decodeIndex(b, id)
		if err != nil {
			log.Warn("pack index does not decode; keeping the pack", "pack", id.String(), "err", err)
			live[id] = true
			continue
		}
		for _, e := range es {
			if chunkRefs[e.ID] {
				live[id] = true
				break
			}
		}
	}
	type object struct {
		kind string // "packs" or "maps"
		id   ChunkID
		size int64
	}
	var objs []object
	for _, kind := range []string{"packs", "maps"} {
		for o, err := range r.t.List(ctx, kind+"/", "") {
			if err != nil {
				return nil, fmt.Errorf("gc: list %s/: %w", kind, err)
			}
			id, err := ParseChunkID(o.Key[strings.LastIndexByte(o.Key, '/')+1:])
			if err != nil {
				continue
			}
			objs = append(objs, object{kind: kind, id: id, size: o.Size})
		}
	}
	seen := map[string]bool{}
	for _, o := range objs {
		mk := gcKey(o.kind, o.id)
		seen[mk] = true
		referenced := live[o.id]
		if o.kind == "maps" {
			referenced = pageRefs[o.id]
		}
		marked, isMarked := marks[mk]
		switch {
		case referenced && isMarked:
			if o.kind == "packs" {
				rep.PacksUnmarked++
			} else {
				rep.PagesUnmarked++
			}
			if !opts.DryRun {
				if err := r.t.Delete(ctx, []string{mk}); err != nil {
					return rep, fmt.Errorf("gc: unmark %s: %w", mk, err)
				}
			}
		case referenced:
			if o.kind == "packs" {
				rep.PacksLive++
			}
		case !isMarked:
			if o.kind == "packs" {
				rep.PacksMarked++
			} else {
				rep.PagesMarked++
			}
			if !opts.DryRun {
				// The time just before the Put: a backup that listed gc/
				// before the mark was visible did so before this plus the
				// Put's latency.
				markBody := marshalJSON(gcMark{Marked: opts.Now().UTC()})
				if err := r.t.Put(ctx, mk, bytes.NewReader(markBody), int64(len(markBody))); err != nil {
					return rep, fmt.Errorf("gc: mark %s: %w", mk, err)
				}
			}
		case !marked.Add(opts.Grace).After(start):
			del := []string{pageKey(o.id)}
			if o.kind == "packs" {
				del = []string{indexKey(o.id), packKey(o.id)} // index first: backups stop seeing it
				rep.PacksDeleted++
			} else {
				rep.PagesDeleted++
			}
			rep.BytesDeleted += o.size
			if !opts.DryRun {
				for _, k := range append(del, mk) {
					if err := r.t.Delete(ctx, []string{k}); err != nil {
						return rep, fmt.Errorf("gc: delete %s: %w", k, err)
					}
				}
			}
			log.Info("deleted", "kind", o.kind, "id", o.id.String(), "marked", marked)
		}
	}
	// Marks whose object is gone.
	if !opts.DryRun {
		for mk := range marks {
			if !seen[mk] {
				if err := r.t.Delete(ctx, []string{mk}); err != nil {
					return rep, fmt.Errorf("gc: delete stale mark %s: %w", mk, err)
				}
			}
		}
	}
	// Indexes whose pack is gone. packs/ was listed after index/, and a
	// pack's Put returns before its index's starts, so a pack missing from
	// that listing was deleted; backups already ignore such an index.
	for _, id := range indexed {
		if seen[gcKey("packs", id)] {
			continue
		}
		rep.IndexesDeleted++
		log.Warn("pack index without its pack (Put after GC swept the pack); deleting it", "pack", id.String())
		if !opts.DryRun {
			if err := r.t.Delete(ctx, []string{indexKey(id)}); err != nil {
				return rep, fmt.Errorf("gc: delete orphan index %s: %w", indexKey(id), err)
			}
		}
	}
	log.Info("gc done", "manifests", rep.Manifests, "packs_deleted", rep.PacksDeleted, "pages_deleted", rep.PagesDeleted,
		"indexes_deleted", rep.IndexesDeleted, "bytes", rep.BytesDeleted)
	return rep, nil
}
