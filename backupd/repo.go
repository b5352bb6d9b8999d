package backupd

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/strata-block/strata/plugins"
)

// Target key prefixes (FORMAT.md, "Layout").
const (
	prefixPacks   = "packs/"
	prefixIndex   = "index/"
	prefixMaps    = "maps/"
	prefixBackups = "backups/"
	prefixGC      = "gc/"
)

func packKey(id ChunkID) string  { s := id.String(); return prefixPacks + s[:2] + "/" + s }
func indexKey(id ChunkID) string { return prefixIndex + id.String() }
func pageKey(id ChunkID) string  { s := id.String(); return prefixMaps + s[:2] + "/" + s }

// Options configure a Repository. The zero value is an unencrypted
// repository with the defaults.
type Options struct {
	// Key encrypts new backups and decrypts encrypted ones; nil: none.
	// A repository opened with a key refuses to restore or verify an
	// unencrypted backup (ErrKey) unless AllowUnencrypted: anyone able to
	// write to the target could otherwise plant one, whose chosen data
	// would pass every check.
	Key *Key
	// AllowUnencrypted lets a repository opened with a Key read backups
	// the key does not authenticate as well: unencrypted ones (taken
	// before the key was set) and encrypted ones whose manifest carries no
	// MAC (written before manifests carried one).
	AllowUnencrypted bool
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// PackSize is the size at which a pack is closed (default
	// DefaultPackSize).
	PackSize int
	// Uploads is the number of packs uploading at once (default 4, the
	// fastest of 1, 2 and 4 on the fs target); with the one being filled
	// it bounds upload memory to (Uploads+1)*PackSize.
	Uploads int
	// Workers is the number of hashing/compressing goroutines (default 2).
	Workers int
	// CacheDir, if set, is a local directory caching pack indexes (they
	// are immutable: a pack id is never reused), so a run fetches only the
	// indexes it has not seen. Entries of packs no longer listed are
	// removed. "" fetches every index every run.
	CacheDir string
}

// Repository is the backup store on one target. Its methods may be called
// concurrently; each Backup loads the chunk index afresh.
type Repository struct {
	t    plugins.Target
	opts Options
	log  *slog.Logger
}

// Open returns the repository on t. It does no I/O; the target stays the
// caller's to close.
func Open(t plugins.Target, opts *Options) *Repository {
	r := &Repository{t: t}
	if opts != nil {
		r.opts = *opts
	}
	if r.opts.PackSize <= 0 {
		r.opts.PackSize = DefaultPackSize
	}
	r.opts.PackSize = min(r.opts.PackSize, 1<<30)
	if r.opts.Uploads <= 0 {
		r.opts.Uploads = 4
	}
	if r.opts.Workers <= 0 {
		r.opts.Workers = 2
	}
	r.log = r.opts.Logger
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	return r
}

// chunkLoc locates a chunk record: pack number in chunkIndex.packs, offset
// and length inside it.
type chunkLoc struct {
	pack   int32
	offset uint32
	length uint32
}

// chunkIndex is the in-memory index of every chunk whose pack index is on
// the target.
type chunkIndex struct {
	packs  []ChunkID
	chunks map[ChunkID]chunkLoc
	// candidates are the packs and pages GC has marked (gc/ objects);
	// Backup does not dedup against them.
	candPacks map[ChunkID]bool
	candPages map[ChunkID]bool
	// gone are the packs whose index was listed but whose pack was not:
	// a backup that overran its deadline Put the index after GC swept the
	// pack (FORMAT.md, "Garbage collection"). Nothing dedups against
	// them; restore and verify report their chunks missing unless another
	// copy exists.
	gone map[ChunkID]bool
	// alts are the other copies of chunks stored more than once (a full
	// re-upload that heals a damaged chunk, racing backups); restore and
	// verify fall back to them.
	alts map[ChunkID][]chunkLoc
	// badIndexes describes the pack indexes that did not decode.
	badIndexes []string
}

// live reports whether chunk id is stored in a pack that exists and is not
// a GC candidate.
func (x *chunkIndex) live(id ChunkID) bool {
	l, ok := x.chunks[id]
	return ok && x.usable(l.pack)
}

// usable reports whether backups may dedup against pack number p.
func (x *chunkIndex) usable(p int32) bool { return x.rank(p) == 0 }

// rank orders the copies of a chunk by preference: 0 in a pack backups may
// use, 1 in a GC candidate (still readable), 2 in a pack that is gone.
func (x *chunkIndex) rank(p int32) int {
	switch id := x.packs[p]; {
	case x.gone[id]:
		return 2
	case x.candPacks[id]:
		return 1
	}
	return 0
}

// getAll reads a whole object of at most max bytes.
func (r *Repository) getAll(ctx context.Context, key string, maxSize int64) ([]byte, error) {
	rc, n, err := r.t.Get(ctx, key, 0, -1)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	defer rc.Close()
	if n > maxSize {
		return nil, fmt.Errorf("object %s is %d bytes, more than %d: %w", key, n, maxSize, ErrCorrupt)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(rc, b); err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	return b, nil
}

// putBytes stores b under key.
func (r *Repository) putBytes(ctx context.Context, key string, b []byte) error {
	if err := r.t.Put(ctx, key, strings.NewReader(string(b)), int64(len(b))); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// listIDs lists the ids named by the last segment of the keys under prefix.
func (r *Repository) listIDs(ctx context.Context, prefix string) ([]ChunkID, error) {
	var out []ChunkID
	for o, err := range r.t.List(ctx, prefix, "") {
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, err)
		}
		name := o.Key[strings.LastIndexByte(o.Key, '/')+1:]
		id, err := ParseChunkID(name)
		if err != nil {
			r.log.Warn("ignoring foreign object", "key", o.Key)
			continue
		}
		out = append(out, id)
	}
	return out, nil
}

// loadIndex lists index/ once and loads every pack index (8 at a time),
// lists gc/ for the GC candidates, and packs/ for the packs that exist.
func (r *Repository) loadIndex(ctx context.Context) (*chunkIndex, error) {
	return r.loadIndexFrom(ctx, false)
}

// loadIndexFrom is loadIndex; with fromTarget the pack indexes are read
// from the target even where the cache has a copy (Verify: the cache
// would hide an index damaged on the target, which every other host and
// a restore after this one's loss read), and a cached copy of an index
// that does not decode there is dropped, so that backups stop
// deduplicating against its pack.
func (r *Repository) loadIndexFrom(ctx context.Context, fromTarget bool) (*chunkIndex, error) {
	x := &chunkIndex{chunks: map[ChunkID]chunkLoc{}, candPacks: map[ChunkID]bool{}, candPages: map[ChunkID]bool{},
		gone: map[ChunkID]bool{}, alts: map[ChunkID][]chunkLoc{}}
	// gc/ first: a mark written after this listing is covered by the
	// grace period (FORMAT.md, "Garbage collection").
	for o, err := range r.t.List(ctx, prefixGC, "") {
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", prefixGC, err)
		}
		kind, name, _ := strings.Cut(strings.TrimPrefix(o.Key, prefixGC), "/")
		id, err := ParseChunkID(name)
		if err != nil {
			continue
		}
		switch kind {
		case "packs":
			x.candPacks[id] = true
		case "maps":
			x.candPages[id] = true
		}
	}
	packs, err := r.listIDs(ctx, prefixIndex)
	if err != nil {
		return nil, err
	}
	x.packs = packs
	// packs/ after index/: a pack's Put returns before its index's Put
	// starts and pack ids are never reused, so an index listed whose pack
	// is not listed now outlived its pack.
	present, err := r.listIDs(ctx, prefixPacks)
	if err != nil {
		return nil, err
	}
	have := make(map[ChunkID]bool, len(present))
	for _, p := range present {
		have[p] = true
	}
	for _, p := range packs {
		if !have[p] {
			x.gone[p] = true
			r.log.Warn("pack index without its pack; not deduplicating against it (GC removes it)", "pack", p.String())
		}
	}
	entries := make([][]indexEntry, len(packs))
	var badMu sync.Mutex
	if err := forEach(ctx, len(packs), 8, func(ctx context.Context, i int) error {
		if !fromTarget {
			if es, ok := r.cachedIndex(packs[i]); ok {
				entries[i] = es
				return nil
			}
		}
		b, err := r.getAll(ctx, indexKey(packs[i]), indexHeadSize+indexEntrySize*maxIndexCount+8)
		if errors.Is(err, plugins.ErrNotFound) {
			return nil // deleted by GC since the listing
		}
		if err != nil {
			return err
		}
		es, err := decodeIndex(b, packs[i])
		if err != nil {
			// One damaged index must not stop every backup and restore:
			// its chunks count as unknown (backups upload them again,
			// restore and verify report them missing) and Verify lists it.
			r.log.Warn("pack index does not decode; ignoring it", "pack", packs[i].String(), "err", err)
			r.uncacheIndex(packs[i])
			badMu.Lock()
			x.badIndexes = append(x.badIndexes, err.Error())
			badMu.Unlock()
			return nil
		}
		entries[i] = es
		r.cacheIndex(packs[i], b)
		return nil
	}); err != nil {
		return nil, err
	}
	r.pruneIndexCache(packs)
	n := 0
	for _, es := range entries {
		n += len(es)
	}
	x.chunks = make(map[ChunkID]chunkLoc, n) // no rehashing as it fills
	for i, es := range entries {
		for _, e := range es {
			loc := chunkLoc{pack: int32(i), offset: e.Offset, length: e.Length}
			old, dup := x.chunks[e.ID]
			switch {
			case !dup:
				x.chunks[e.ID] = loc
			case x.rank(int32(i)) < x.rank(old.pack):
				x.chunks[e.ID] = loc
				x.alts[e.ID] = append(x.alts[e.ID], old)
			default:
				x.alts[e.ID] = append(x.alts[e.ID], loc)
			}
		}
	}
	return x, nil
}

// forEach runs fn(i) for i in [0, n) on up to par goroutines, stopping at
// the first error.
func forEach(ctx context.Context, n, par int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(par, n) {
		wg.Go(func() {
			for i := range next {
				if err := fn(ctx, i); err != nil {
					cancel(err)
				}
			}
		})
	}
loop:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break loop
		}
	}
	close(next)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return nil
}

// LoadManifest reads, decodes and validates the manifest under key, and,
// in a repository with a key, checks that the key authenticates it
// (authenticate).
func (r *Repository) LoadManifest(ctx context.Context, key string) (*Manifest, error) {
	m, err := r.readManifest(ctx, key)
	if err != nil {
		return nil, err
	}
	if err := r.authenticate(m); err != nil {
		return nil, err
	}
	return m, nil
}

// readManifest reads, decodes and validates the manifest under key
// without authenticating it: for GC's references and for Delete, where a
// manifest someone changed can only keep more data or delete itself.
func (r *Repository) readManifest(ctx context.Context, key string) (*Manifest, error) {
	vol, id, err := ParseManifestKey(key)
	if err != nil {
		return nil, err
	}
	b, err := r.getAll(ctx, key, maxManifestSize)
	if err != nil {
		return nil, fmt.Errorf("volume %q backup %s: %w", vol, id, err)
	}
	m, err := DecodeManifest(b)
	if err != nil {
		return nil, fmt.Errorf("volume %q backup %s: %w", vol, id, err)
	}
	if m.Volume != vol || m.ID != id {
		return nil, fmt.Errorf("manifest %s names volume %q backup %s: %w", key, m.Volume, m.ID, ErrCorrupt)
	}
	return m, nil
}

// authenticate checks, in a repository with a key, that the key
// authenticates m: m is encrypted with that key and its MAC holds, or m
// is unencrypted (or encrypted without a MAC) and AllowUnencrypted. So a
// listing, the parent of an incremental and a backup reused as unchanged
// are never a manifest the key does not cover: one copied with another
// key_id, or stripped of its encryption, was listed as the newest backup
// and every incremental on it failed. Without a key nothing is checked
// (the coordinator's acknowledgement checks; restore then refuses an
// encrypted backup with ErrKey).
func (r *Repository) authenticate(m *Manifest) error {
	k := r.opts.Key
	switch {
	case k == nil:
		return nil
	case !m.Encrypted || m.KeyID != k.ID():
		_, err := r.keyFor(m)
		return err
	case m.MAC == "" && r.opts.AllowUnencrypted:
		return nil
	case m.MAC == "":
		return fmt.Errorf("volume %q backup %s: its manifest carries no MAC, so anyone able to write to the target could have written or changed it; if Strata wrote it before manifests were authenticated (2026-11-28), allow unauthenticated backups (strata server --backup-allow-unencrypted): %w", m.Volume, m.ID, ErrKey)
	case !hmac.Equal([]byte(m.MAC), []byte(k.manifestMAC(m))):
		return fmt.Errorf("volume %q backup %s: its manifest fails its MAC: it was changed after it was written (relabelled, swapped with another's fields, or damaged): %w", m.Volume, m.ID, ErrCorrupt)
	}
	return nil
}

// keyFor returns the key to read backup m with, or an error if the
// repository's key does not match the manifest.
func (r *Repository) keyFor(m *Manifest) (*Key, error) {
	switch {
	case !m.Encrypted && r.opts.Key != nil && !r.opts.AllowUnencrypted:
		return nil, fmt.Errorf("volume %q backup %s is not encrypted, and a repository opened with a key reads only encrypted backups (an unencrypted one could have been planted by anyone able to write to the target); if it was taken before the key was set, allow unencrypted backups (strata server --backup-allow-unencrypted): %w", m.Volume, m.ID, ErrKey)
	case !m.Encrypted:
		return nil, nil
	case r.opts.Key == nil:
		return nil, fmt.Errorf("volume %q backup %s is encrypted (key %s) and no key was given: %w", m.Volume, m.ID, m.KeyID, ErrKey)
	case r.opts.Key.ID() != m.KeyID:
		return nil, fmt.Errorf("volume %q backup %s is encrypted with key %s, not %s: %w", m.Volume, m.ID, m.KeyID, r.opts.Key.ID(), ErrKey)
	}
	return r.opts.Key, nil
}

// loadPage reads and decodes page i of m.
func (r *Repository) loadPage(ctx context.Context, m *Manifest, k *Key, i int) (page, error) {
	id, err := ParseChunkID(m.Pages[i])
	if err != nil {
		return page{}, err
	}
	b, err := r.getAll(ctx, pageKey(id), maxPageObjectSize)
	if errors.Is(err, plugins.ErrNotFound) {
		err = fmt.Errorf("%w: %w", err, ErrMissing)
	}
	if err != nil {
		return page{}, fmt.Errorf("volume %q backup %s: map page %d: %w", m.Volume, m.ID, i, err)
	}
	p, err := decodePage(b, id, k, m.pageEntries(i))
	if err != nil {
		return page{}, fmt.Errorf("volume %q backup %s: map page %d: %w", m.Volume, m.ID, i, err)
	}
	return p, nil
}

// pageStream loads the pages of m in order on a goroutine, ahead of the
// consumer by at most depth pages.
func (r *Repository) pageStream(ctx context.Context, m *Manifest, k *Key, from, depth int) <-chan pageResult {
	ch := make(chan pageResult, depth)
	go func() {
		defer close(ch)
		for i := from; i < len(m.Pages); i++ {
			p, err := r.loadPage(ctx, m, k, i)
			select {
			case ch <- pageResult{i: i, p: p, err: err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

type pageResult struct {
	i   int
	p   page
	err error
}

// BackupInfo is one entry of List.
type BackupInfo struct {
	Key      string `json:"key"`
	Volume   string `json:"volume"`
	ID       string `json:"id"`
	Snapshot string `json:"snapshot"`
	// SnapshotCreated identifies the snapshot with its name
	// (Manifest.SnapshotCreated); zero for older backups.
	SnapshotCreated time.Time `json:"snapshot_created,omitzero"`
	Parent          string    `json:"parent,omitempty"`
	Created         time.Time `json:"created"`
	Size            int64     `json:"size"`
	Digest          string    `json:"digest"`
	// Tags are the manifest's tags (TagSystem for a held backup).
	Tags map[string]string `json:"tags,omitempty"`
}

// List returns the backups of volume ("" for every volume), oldest first
// per volume. A manifest that does not load because it is damaged or of an
// unknown format (ErrCorrupt) is logged and left out (ListManifests reports
// it); any other failure to load one (a target that does not answer) fails
// List with an error naming it: a caller must not act on a partial list.
func (r *Repository) List(ctx context.Context, volume string) ([]BackupInfo, error) {
	l, err := r.ListManifests(ctx, volume)
	if err != nil {
		return nil, err
	}
	return l.Backups, nil
}

// Listing is ListManifests' result.
type Listing struct {
	// Backups are the manifests that load, oldest first per volume.
	Backups []BackupInfo
	// Skipped are the manifests that do not load (ErrCorrupt: damage, a
	// version or field this one does not know, a MAC that fails; ErrKey:
	// an encrypted one without a MAC). What they hold, tags included, is
	// unknown.
	Skipped []SkippedManifest
}

// SkippedManifest is a manifest ListManifests could not read.
type SkippedManifest struct {
	Key string `json:"key"`
	Err string `json:"error"`
}

// ListManifests is List, also reporting the manifests it left out.
func (r *Repository) ListManifests(ctx context.Context, volume string) (*Listing, error) {
	prefix := prefixBackups
	if volume != "" {
		if !ValidName(volume) {
			return nil, fmt.Errorf("volume name %q: %w", volume, ErrInvalid)
		}
		prefix += volume + "/"
	}
	var keys []string
	for o, err := range r.t.List(ctx, prefix, "") {
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, err)
		}
		if _, _, err := ParseManifestKey(o.Key); err != nil {
			r.log.Warn("ignoring foreign object", "key", o.Key)
			continue
		}
		keys = append(keys, o.Key)
	}
	l := &Listing{Backups: make([]BackupInfo, 0, len(keys))}
	for _, k := range keys {
		m, err := r.LoadManifest(ctx, k)
		if errors.Is(err, plugins.ErrNotFound) {
			gone, gerr := r.gone(ctx, k, err)
			if gone {
				continue // deleted since the listing
			}
			err = gerr
		}
		switch {
		case errors.Is(err, ErrCorrupt), errors.Is(err, ErrKey):
			// Damaged, or not authenticated by the key (authenticate):
			// not a backup to show nor to build on.
			r.log.Warn("manifest does not load; leaving it out", "key", k, "err", err)
			l.Skipped = append(l.Skipped, SkippedManifest{Key: k, Err: err.Error()})
			continue
		case err != nil:
			return nil, fmt.Errorf("list backups: manifest %s: %w", k, err)
		}
		l.Backups = append(l.Backups, BackupInfo{Key: k, Volume: m.Volume, ID: m.ID, Snapshot: m.Snapshot, SnapshotCreated: m.SnapshotCreated, Parent: m.Parent, Created: m.Created, Size: m.Size, Digest: m.Digest, Tags: m.Tags})
	}
	sortInfos(l.Backups)
	return l, nil
}

// gone checks, after a Get of key listed a moment ago returned err
// (plugins.ErrNotFound), that the object is really gone: deleted since the
// listing, not a spurious 404 (a gateway, a plugin that misclassifies an
// error). If it is not, the error it returns says so and no longer wraps
// plugins.ErrNotFound: a caller must not take the object for absent.
func (r *Repository) gone(ctx context.Context, key string, err error) (bool, error) {
	has, herr := r.t.Has(ctx, []string{key})
	switch {
	case herr != nil:
		return false, fmt.Errorf("%v; checking whether %s still exists: %w", err, key, herr)
	case has[0]:
		return false, fmt.Errorf("%v, but the target lists %s and Has finds it: %w", err, key, plugins.ErrTransient)
	}
	return true, nil
}

// marshalJSON is json.Marshal for small internal objects.
func marshalJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// Latest returns the newest backup of volume on the target, the parent
// for the next incremental; plugins.ErrNotFound if there is none.
func (r *Repository) Latest(ctx context.Context, volume string) (BackupInfo, error) {
	bs, err := r.List(ctx, volume)
	if err != nil {
		return BackupInfo{}, err
	}
	if len(bs) == 0 {
		return BackupInfo{}, fmt.Errorf("no backup of volume %q: %w", volume, plugins.ErrNotFound)
	}
	return bs[len(bs)-1], nil
}

// cachedIndex returns the cached index of pack, if the cache has a copy
// that decodes.
func (r *Repository) cachedIndex(pack ChunkID) ([]indexEntry, bool) {
	if r.opts.CacheDir == "" {
		return nil, false
	}
	b, err := os.ReadFile(filepath.Join(r.opts.CacheDir, "index", pack.String()))
	if err != nil {
		return nil, false
	}
	es, err := decodeIndex(b, pack)
	if err != nil {
		r.log.Warn("cached pack index does not decode; fetching it", "pack", pack.String(), "err", err)
		return nil, false
	}
	return es, true
}

// uncacheIndex drops the cached copy of pack's index, if any.
func (r *Repository) uncacheIndex(pack ChunkID) {
	if r.opts.CacheDir == "" {
		return
	}
	if err := os.Remove(filepath.Join(r.opts.CacheDir, "index", pack.String())); err != nil && !errors.Is(err, fs.ErrNotExist) {
		r.log.Warn("index cache", "pack", pack.String(), "err", err)
	}
}

// cacheIndex stores an index in the cache (temp and rename; a failure
// only costs a fetch next time).
func (r *Repository) cacheIndex(pack ChunkID, b []byte) {
	if r.opts.CacheDir == "" {
		return
	}
	dir := filepath.Join(r.opts.CacheDir, "index")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		r.log.Warn("index cache", "err", err)
		return
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		r.log.Warn("index cache", "err", err)
		return
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(dir, pack.String()))
	}
	if err != nil {
		_ = os.Remove(f.Name())
		r.log.Warn("index cache", "err", err)
	}
}

// pruneIndexCache removes cached indexes of packs not in the listing.
func (r *Repository) pruneIndexCache(listed []ChunkID) {
	if r.opts.CacheDir == "" {
		return
	}
	dir := filepath.Join(r.opts.CacheDir, "index")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	keep := make(map[string]bool, len(listed))
	for _, p := range listed {
		keep[p.String()] = true
	}
	for _, e := range ents {
		if !keep[e.Name()] && !strings.HasPrefix(e.Name(), ".tmp-") {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// FindBackup returns the manifest key of backup id, whatever its volume
// (plugins.ErrNotFound if none). It lists backups/ (manifests only).
func (r *Repository) FindBackup(ctx context.Context, id string) (string, error) {
	if parseHex(id, make([]byte, 16)) != nil {
		return "", fmt.Errorf("backup id %q: want 32 lowercase hex digits: %w", id, ErrInvalid)
	}
	keys, err := r.manifestKeys(ctx)
	if err != nil {
		return "", err
	}
	for _, k := range keys {
		if strings.HasSuffix(k, "/"+id) {
			return k, nil
		}
	}
	return "", fmt.Errorf("backup %s: %w", id, plugins.ErrNotFound)
}
