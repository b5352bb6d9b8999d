package backupd

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
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
// plugins.ErrNotFound; one a system backup holds is ErrHeld; one whose
// manifest does not load is refused (ErrCorrupt, see DeleteOptions.Force).
func (r *Repository) Delete(ctx context.Context, volume, id string) error {
	return r.DeleteWith(ctx, volume, id, DeleteOptions{})
}

// DeleteHeld is Delete for the coordinator: it removes a backup even when
// it carries TagSystem, or when its manifest does not load. The caller
// checks that no system manifest names it any more (the backup id is one
// its own run recorded).
func (r *Repository) DeleteHeld(ctx context.Context, volume, id string) error {
	return r.DeleteWith(ctx, volume, id, DeleteOptions{Held: true, Force: true})
}

// DeleteOptions tune DeleteWith.
type DeleteOptions struct {
	// Held deletes a backup a system backup holds (TagSystem); without it
	// such a backup is refused with ErrHeld. Only the coordinator sets it.
	Held bool
	// Force deletes a manifest that does not load (ErrCorrupt). Without
	// it such a manifest is refused: it may be damage, but it may also be
	// a backup written by a newer version (an unknown version or field)
	// whose tags cannot be read, so whether a system backup holds it is
	// unknown.
	Force bool
}

// DeleteWith is Delete with options.
func (r *Repository) DeleteWith(ctx context.Context, volume, id string, opts DeleteOptions) error {
	key := ManifestKey(volume, id)
	if _, _, err := ParseManifestKey(key); err != nil {
		return err
	}
	// Unauthenticated: deleting a manifest someone changed deletes only
	// it, and one written before manifest MACs must stay deletable.
	m, err := r.readManifest(ctx, key)
	switch {
	case errors.Is(err, plugins.ErrNotFound):
		return fmt.Errorf("delete backup %s of volume %q: %w", id, volume, plugins.ErrNotFound)
	case err == nil && !opts.Held && m.Tags[TagSystem] != "":
		return fmt.Errorf("delete backup %s of volume %q: system backup %s names it; remove the system backup instead (strata system backup rm %s): %w",
			id, volume, m.Tags[TagSystem], m.Tags[TagSystem], ErrHeld)
	case errors.Is(err, ErrCorrupt) && !opts.Force:
		return fmt.Errorf("delete backup %s of volume %q: refusing: its manifest does not load, so whether a system backup holds it is unknown "+
			"(damage, or a manifest written by a newer version); delete it with DeleteOptions.Force if it is damage: %w", id, volume, err)
	case err != nil && !errors.Is(err, ErrCorrupt):
		// A target that does not answer stops here.
		return fmt.Errorf("delete backup %s of volume %q: %w", id, volume, err)
	}
	if err := r.t.Delete(ctx, []string{key}); err != nil {
		return fmt.Errorf("delete backup %s of volume %q: %w", id, volume, err)
	}
	r.log.Info("backup deleted", "op", "delete", "volume", volume, "id", id, "unreadable", err != nil)
	return nil
}

// PruneOptions select the backups to keep, per volume: the KeepLast most
// recent and every one created within KeepWithin of the volume's newest
// backup, or of now if that is earlier (as restic's --keep-within: a
// volume whose backups stopped is not emptied by time passing, and a
// backup dated in the future does not push the others out of the window).
// The rest are deleted (their manifests; GC reclaims the data).
type PruneOptions struct {
	Volume     string // "" for every volume
	KeepLast   int
	KeepWithin time.Duration
	DryRun     bool
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// PruneResult lists what Prune kept and deleted (or would delete).
type PruneResult struct {
	Kept    []BackupInfo `json:"kept"`
	Deleted []BackupInfo `json:"deleted"`
	// Held were kept because a system backup holds them (TagSystem);
	// they count towards neither KeepLast nor KeepWithin.
	Held []BackupInfo `json:"held,omitempty"`
	// Future were kept because they are dated more than maxClockSkew
	// after now: a host whose clock ran ahead, or a damaged date
	// (manifests carry no checksum). They count towards neither rule and
	// do not anchor KeepWithin.
	Future []BackupInfo `json:"future,omitempty"`
	// Skipped are the manifests that do not load (damage, or a newer
	// format): neither kept nor deleted.
	Skipped []SkippedManifest `json:"skipped,omitempty"`
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
	if opts.Now == nil {
		opts.Now = time.Now
	}
	l, err := r.ListManifests(ctx, opts.Volume)
	if err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	now := opts.Now()
	res := &PruneResult{Skipped: l.Skipped}
	byVol := map[string][]BackupInfo{}
	for _, b := range l.Backups {
		switch {
		case b.Tags[TagSystem] != "":
			res.Held = append(res.Held, b)
		case b.Created.After(now.Add(maxClockSkew)):
			r.log.Warn("backup dated in the future; keeping it, and not counting it for retention", "op", "prune",
				"volume", b.Volume, "id", b.ID, "created", b.Created, "now", now)
			res.Future = append(res.Future, b)
		default:
			byVol[b.Volume] = append(byVol[b.Volume], b)
		}
	}
	for _, vol := range slices.Sorted(maps.Keys(byVol)) {
		bs := byVol[vol]
		slices.Reverse(bs) // newest first
		// The window ends at the newest backup, or now if that is
		// earlier (one within maxClockSkew ahead).
		anchor := now
		if bs[0].Created.Before(now) {
			anchor = bs[0].Created
		}
		for i, b := range bs {
			if i < opts.KeepLast || (opts.KeepWithin > 0 && anchor.Sub(b.Created) <= opts.KeepWithin) {
				res.Kept = append(res.Kept, b)
				continue
			}
			if !opts.DryRun {
				// Gone already (another prune): it is deleted all the same.
				if err := r.Delete(ctx, b.Volume, b.ID); err != nil && !errors.Is(err, plugins.ErrNotFound) {
					return res, fmt.Errorf("prune: %w", err)
				}
			}
			res.Deleted = append(res.Deleted, b)
		}
	}
	return res, nil
}

// GCOptions tune GC.
type GCOptions struct {
	// Grace is how long a pack or page stays marked before it may be
	// deleted. It must be longer than every backup's MaxDuration plus the
	// longest a mark's Put may take (leaseSafe) plus the clock difference
	// tolerated between hosts (maxClockSkew): FORMAT.md, "Why it is safe".
	// Default 2×MaxDuration, and at least MaxDuration + 2×(leaseSafe +
	// maxClockSkew).
	Grace time.Duration
	// MaxDuration is the longest MaxDuration of the backups that write
	// to the repository (default DefaultMaxDuration); GC refuses a Grace
	// not longer than it plus Margin.
	MaxDuration time.Duration
	// Margin is how much longer than MaxDuration the Grace must be: the
	// longest a mark's Put may take plus the clock difference between the
	// hosts writing to the repository. Default 15 minutes (leaseSafe +
	// maxClockSkew). A smaller margin also bounds each mark's Put to it,
	// and suits only hosts that share one clock (a single host) and a
	// target that answers in well under the margin.
	Margin time.Duration
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
	// IndexesMarked and IndexesDeleted count pack indexes whose pack is
	// not listed (Put by a backup that overran its deadline after the
	// pack was swept): marked like a pack, deleted a Grace later if the
	// pack is still missing.
	IndexesMarked  int `json:"indexes_marked"`
	IndexesDeleted int `json:"indexes_deleted"`
}

type gcMark struct {
	Marked time.Time `json:"marked"`
}

func gcKey(kind string, id ChunkID) string { return prefixGC + kind + "/" + id.String() }

// graceMargin is how much longer than the backups' MaxDuration GC's grace
// must be (FORMAT.md, "Why it is safe"): a backup may have listed gc/ up
// to the mark Put's latency after the time the mark holds, and the lease
// gives that Put at most leaseSafe; the mark's time and the sweep's start
// are read on the clocks of hosts that may disagree by maxClockSkew.
const graceMargin = leaseSafe + maxClockSkew

// graceTooShort is the error for a grace not longer than d + margin.
func graceTooShort(grace, d, margin time.Duration, what string) error {
	return fmt.Errorf("gc: grace %v is too short: it must be longer than %v, the longest a backup may run (%v, %s) plus the margin for a GC mark's Put and the clock difference between hosts (%v, GCOptions.Margin; strata server --backup-gc-margin); a running backup's packs could be deleted",
		grace, d+margin, d, what, margin)
}

// GC deletes packs and map pages no backup references, in two phases
// (FORMAT.md, "Garbage collection"): an unreferenced object is first
// marked (gc/packs/<id>, gc/maps/<id>, holding the time); a later run
// deletes it only if it is still unreferenced and was marked at least
// Grace before that run started, and unmarks it if it is referenced again.
// Backups never dedup against a marked pack or reuse a marked page, so a
// backup that could reference a deleted object must have listed gc/
// before the mark, and so wrote its manifest before the run that deletes.
//
// Only one GC runs on a repository at a time: a run takes a lease
// (locks/) and fails with ErrBusy if another holds one. GC refuses to run
// if any manifest or map page fails to load: it could not tell what that
// backup references.
func (r *Repository) GC(ctx context.Context, opts GCOptions) (*GCReport, error) {
	if opts.MaxDuration <= 0 {
		opts.MaxDuration = DefaultMaxDuration
	}
	if opts.Margin <= 0 {
		opts.Margin = graceMargin
	}
	if opts.Grace <= 0 {
		opts.Grace = max(2*opts.MaxDuration, opts.MaxDuration+2*opts.Margin)
	}
	if opts.Grace <= opts.MaxDuration+opts.Margin {
		return nil, fmt.Errorf("%w: %w", graceTooShort(opts.Grace, opts.MaxDuration, opts.Margin, "GCOptions.MaxDuration; strata server --backup-max-duration"), ErrInvalid)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	rep := &GCReport{}
	log := r.log.With("op", "gc")
	// The lease before the start time: marks older than start-Grace were
	// then all written by earlier runs, which have ended.
	lease := &gcLease{}
	if !opts.DryRun {
		var err error
		if lease, err = r.takeGCLease(ctx, opts.Now); err != nil {
			return nil, err
		}
		defer lease.release()
	}
	// Every backup records its deadline before it starts: one recorded
	// after this listing belongs to a backup that started after this run,
	// whose marks and sweeps a later run decides.
	if most, from, err := r.recordedMaxDuration(ctx); err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	} else if opts.Grace <= most+opts.Margin {
		return nil, fmt.Errorf("%w; pass a longer grace, or delete %s once no host backs up with that deadline: %w",
			graceTooShort(opts.Grace, most, opts.Margin, "the deadline a backup of this repository used, recorded as "+from), from, ErrInvalid)
	}
	start := opts.Now()

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
		mk, ok := decodeMark(b)
		if !ok {
			log.Warn("unreadable gc mark; marking again", "key", o.Key)
			mk.Marked = start
			if !opts.DryRun {
				if err := lease.put(ctx, o.Key, marshalJSON(mk)); err != nil {
					return nil, fmt.Errorf("gc: mark %s again: %w", o.Key, err)
				}
			}
		}
		marks[o.Key] = mk.Marked
	}

	// What the backups reference, listed after start.
	keys, err := r.manifestKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	chunkRefs := map[ChunkID]bool{}
	pageRefs := map[ChunkID]int{} // the pages referenced, with their entry counts
	for _, key := range keys {
		// Unauthenticated: a changed manifest can only make GC keep more.
		m, err := r.readManifest(ctx, key)
		if errors.Is(err, plugins.ErrNotFound) {
			// Deleted since the listing (Delete and Prune take no lease),
			// or a spurious 404: ignoring a backup that exists would let
			// this run mark and later sweep what it references.
			gone, gerr := r.gone(ctx, key, err)
			if gone {
				continue
			}
			err = gerr
		}
		if err == nil {
			var k *Key
			if k, err = r.keyFor(m); err == nil {
				err = r.refPages(ctx, m, k, pageRefs, chunkRefs)
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
			// Only a GC holding the lease deletes indexes, and this one
			// holds it: an index just listed that is not found is an
			// anomaly (a spurious 404 from a gateway, a plugin that
			// misclassifies an error). What it lists is unknown, so the
			// pack is kept, like one whose index does not decode: that
			// costs one run's delay, while aborting would let one flaky
			// read stop every GC. (In a DryRun, without the lease, it
			// may also be a concurrent GC's deletion; keeping only
			// under-reports.)
			log.Warn("pack index listed but not found; keeping the pack", "pack", id.String(), "err", err)
			live[id] = true
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
		// orphan: a pack index whose pack was not listed (after the
		// index was).
		orphan bool
	}
	var objs []object
	listed := map[ChunkID]bool{}
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
			if kind == "packs" {
				listed[id] = true
			}
		}
	}
	// An index whose pack a listing made after it did not show: its pack
	// was swept before the index's Put landed. Backups already ignore it;
	// it goes through the same two phases as a pack, so that a listing
	// that lags (NFS, an eventually consistent store) costs nothing.
	for _, id := range indexed {
		if !listed[id] {
			objs = append(objs, object{kind: "packs", id: id, orphan: true})
		}
	}
	seen := map[string]bool{}
	for _, o := range objs {
		mk := gcKey(o.kind, o.id)
		seen[mk] = true
		referenced := live[o.id] && !o.orphan
		if o.kind == "maps" {
			_, referenced = pageRefs[o.id]
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
				if err := lease.delete(ctx, mk); err != nil {
					return rep, fmt.Errorf("gc: unmark %s: %w", mk, err)
				}
			}
		case referenced:
			if o.kind == "packs" {
				rep.PacksLive++
			}
		case !isMarked:
			switch {
			case o.orphan:
				rep.IndexesMarked++
			case o.kind == "packs":
				rep.PacksMarked++
			default:
				rep.PagesMarked++
			}
			if !opts.DryRun {
				// The time just before the Put: a backup that listed gc/
				// before the mark was visible did so before this plus the
				// Put's latency.
				// The Put may take at most the margin the Grace allows
				// for it (the lease bounds it further).
				markBody := marshalJSON(gcMark{Marked: opts.Now().UTC()})
				mctx, cancel := context.WithTimeout(ctx, opts.Margin)
				err := lease.put(mctx, mk, markBody)
				cancel()
				if err != nil {
					return rep, fmt.Errorf("gc: mark %s: %w", mk, err)
				}
			}
		case !marked.Add(opts.Grace).After(start):
			if !opts.DryRun {
				sweep, err := r.sweepable(ctx, lease, mk, marked, o.orphan, o.id)
				if err != nil {
					return rep, err
				}
				if !sweep {
					continue
				}
			}
			var del []string
			switch {
			case o.orphan:
				del = []string{indexKey(o.id)}
				rep.IndexesDeleted++
			case o.kind == "packs":
				del = []string{indexKey(o.id), packKey(o.id)} // index first: backups stop seeing it
				rep.PacksDeleted++
			default:
				del = []string{pageKey(o.id)}
				rep.PagesDeleted++
			}
			rep.BytesDeleted += o.size
			if !opts.DryRun {
				for _, k := range append(del, mk) {
					if err := lease.delete(ctx, k); err != nil {
						return rep, fmt.Errorf("gc: delete %s: %w", k, err)
					}
				}
			}
			log.Info("deleted", "kind", o.kind, "id", o.id.String(), "orphan_index", o.orphan, "marked", marked)
		}
	}
	// Marks whose object is gone.
	if !opts.DryRun {
		for mk := range marks {
			if !seen[mk] {
				if err := lease.delete(ctx, mk); err != nil {
					return rep, fmt.Errorf("gc: delete stale mark %s: %w", mk, err)
				}
			}
		}
	}
	// A run whose lease lapsed may have decided on a stale view.
	if err := lease.check(); err != nil {
		return rep, err
	}
	log.Info("gc done", "manifests", rep.Manifests, "packs_deleted", rep.PacksDeleted, "pages_deleted", rep.PagesDeleted,
		"indexes_deleted", rep.IndexesDeleted, "bytes", rep.BytesDeleted)
	return rep, nil
}

// refPages adds m's pages to pages (with their entry counts) and the
// chunks they list to chunks. It loads only the pages no earlier manifest
// of this run listed: an incremental shares all but its changed pages with
// its parent, so GC reads each page once, not once per backup. A page
// listed again must be expected to hold the same number of entries.
func (r *Repository) refPages(ctx context.Context, m *Manifest, k *Key, pages map[ChunkID]int, chunks map[ChunkID]bool) error {
	var todo []int
	for i, s := range m.Pages {
		id, err := ParseChunkID(s)
		if err != nil {
			return fmt.Errorf("volume %q backup %s: map page %d: %w", m.Volume, m.ID, i, err)
		}
		want := m.pageEntries(i)
		if n, seen := pages[id]; seen {
			if n != want {
				return fmt.Errorf("volume %q backup %s: map page %d (%s) has %d entries in another backup, this one expects %d: %w", m.Volume, m.ID, i, id, n, want, ErrCorrupt)
			}
			continue
		}
		pages[id] = want
		todo = append(todo, i)
	}
	var mu sync.Mutex
	return forEach(ctx, len(todo), 8, func(ctx context.Context, j int) error {
		p, err := r.loadPage(ctx, m, k, todo[j])
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for _, c := range p.IDs {
			if !c.IsZero() {
				chunks[c] = true
			}
		}
		return nil
	})
}

func decodeMark(b []byte) (gcMark, bool) {
	var mk gcMark
	if err := json.Unmarshal(b, &mk); err != nil || mk.Marked.IsZero() {
		return gcMark{}, false
	}
	return mk, true
}

// sweepable checks, just before a deletion, what the decision to delete
// rests on: GC still holds its lease, the mark mk still holds the time
// read at the start (it was not removed and written again meanwhile), and
// for an orphan index that its pack is still missing. It reports false,
// logging why, for an object to keep.
func (r *Repository) sweepable(ctx context.Context, lease *gcLease, mk string, marked time.Time, orphan bool, id ChunkID) (bool, error) {
	if err := lease.check(); err != nil {
		return false, err
	}
	b, err := r.getAll(ctx, mk, 4096)
	if errors.Is(err, plugins.ErrNotFound) {
		r.log.Info("mark removed since this GC started; keeping", "op", "gc", "mark", mk)
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("gc: %w", err)
	}
	if now, ok := decodeMark(b); !ok || !now.Marked.Equal(marked) {
		r.log.Info("mark changed since this GC started; keeping", "op", "gc", "mark", mk)
		return false, nil
	}
	if orphan {
		has, err := r.t.Has(ctx, []string{packKey(id)})
		if err != nil {
			return false, fmt.Errorf("gc: %w", err)
		}
		if has[0] {
			r.log.Info("the pack of an index thought orphan exists (a listing lagged); keeping", "op", "gc", "pack", id.String())
			return false, nil
		}
	}
	return true, nil
}
