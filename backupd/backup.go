package backupd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/plugins"
)

// DefaultMaxDuration is BackupOptions.MaxDuration's default. GCOptions.Grace
// must be longer by more than 15 minutes (its default is 2×
// GCOptions.MaxDuration, which defaults to this).
const DefaultMaxDuration = 6 * time.Hour

// BackupOptions describe one backup run.
type BackupOptions struct {
	// Volume and Snapshot name what Source holds; both are recorded.
	Volume   string
	Snapshot string
	// SnapshotCreated is the snapshot's creation time in the snapshot
	// store, recorded with its name (Manifest.SnapshotCreated).
	SnapshotCreated time.Time
	// Source is the snapshot to read.
	Source Source
	// Parent is the id of an earlier acknowledged backup of Volume on this
	// target whose snapshot Changed is relative to; "" makes a full
	// backup (every allocated extent is read and hashed).
	Parent string
	// Changed lists the extents written between the parent's snapshot and
	// Snapshot (blockdev.Manager.Changed). Only they are read; the rest of
	// the map comes from the parent. Required (possibly empty) with Parent.
	Changed []Extent
	// Full reads the whole source and uploads every non-zero chunk again,
	// deduplicating only within this run: it ignores Parent and the
	// chunks already stored. It heals a store with damaged chunks (restore
	// and verify fall back to the new copies).
	Full bool
	// Tags are recorded in the manifest (the coordinator's system backup
	// id and fencing token, for example).
	Tags map[string]string
	// Progress, if set, receives progress events.
	Progress ProgressFunc
	// MaxDuration bounds the time from loading the chunk index to writing
	// the manifest (ErrTooSlow past it); default DefaultMaxDuration. GC's
	// grace period must be longer than every backup's MaxDuration.
	MaxDuration time.Duration
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Result is an acknowledged backup: its manifest is on the target, was read
// back and matched.
type Result struct {
	ID          string
	ManifestKey string
	Digest      string
	Manifest    *Manifest
	Stats
}

// StopAfter is how long after it starts a backup of maximum duration
// maxDur is stopped (ErrTooSlow): maxDur and as much again, from 10 s to a
// minute. No backup commits later than that.
func StopAfter(maxDur time.Duration) time.Duration {
	return maxDur + min(max(maxDur, 10*time.Second), time.Minute)
}

// Backup backs up opts.Source and returns only once the backup is
// acknowledged (FORMAT.md, "Commit order"). On error no manifest for it
// exists: one whose Put failed, returned past the deadline or did not
// read back is withdrawn (deleted), even if ctx was cancelled. Only if
// that delete fails too may it remain; the error then says so.
func (r *Repository) Backup(ctx context.Context, opts BackupOptions) (_ *Result, err error) {
	if err := r.checkBackupOptions(&opts); err != nil {
		return nil, err
	}
	log := r.log.With("op", "backup", "volume", opts.Volume, "snapshot", opts.Snapshot)
	b := &backupRun{r: r, opts: opts, k: r.opts.Key, size: opts.Source.Size(), pageChunks: PageChunks}
	b.progress(PhaseIndex)
	n, err := r.recordMaxDuration(ctx, opts.MaxDuration)
	if err != nil {
		return nil, fmt.Errorf("backup of volume %q: %w", opts.Volume, err)
	}
	b.uploaded.Add(n)
	// The clock starts before gc/ is listed: GC's protocol needs the
	// manifest written within MaxDuration of that listing.
	started := opts.Now()
	// Past that the backup cannot commit (ErrTooSlow): stop it a little
	// after (StopAfter), whatever it is waiting on (a target or plugin that
	// stopped answering would otherwise hold it, and its volume, for
	// good). The withdrawal of a late manifest has a context of its own.
	ctx, cancel := context.WithTimeoutCause(ctx, StopAfter(opts.MaxDuration),
		fmt.Errorf("backup of volume %q stopped: still running well past its maximum duration %v: %w", opts.Volume, opts.MaxDuration, ErrTooSlow))
	defer cancel()
	defer func() {
		// Whatever step the deadline cut short (the manifest's Put or
		// read-back too), the error says why.
		if err != nil && !errors.Is(err, ErrTooSlow) {
			if cause := context.Cause(ctx); errors.Is(cause, ErrTooSlow) {
				err = fmt.Errorf("%w (%v)", cause, err)
			}
		}
	}()
	idx, err := r.loadIndex(ctx)
	if err != nil {
		return nil, fmt.Errorf("backup of volume %q: loading the chunk index: %w", opts.Volume, err)
	}
	b.idx = idx
	if opts.Parent != "" && !opts.Full {
		b.parent, err = r.LoadManifest(ctx, ManifestKey(opts.Volume, opts.Parent))
		if err != nil {
			return nil, fmt.Errorf("backup of volume %q: parent: %w", opts.Volume, err)
		}
		if b.parent.ChunkSize != ChunkSize || b.parent.Encrypted != (b.k != nil) {
			log.Info("parent has another layout or encryption; taking a full backup", "parent", opts.Parent)
			b.parent = nil
		} else if _, err := r.keyFor(b.parent); err != nil {
			return nil, fmt.Errorf("backup of volume %q: parent: %w", opts.Volume, err)
		} else {
			// An incremental keeps its parent's page size, so that it can
			// reuse the pages that did not change.
			b.pageChunks = b.parent.PageChunks
		}
	}
	m, err := b.run(ctx)
	if err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, ErrTooSlow) {
			return nil, fmt.Errorf("%w (%v)", cause, err)
		}
		return nil, fmt.Errorf("backup of volume %q snapshot %q: %w", opts.Volume, opts.Snapshot, err)
	}
	b.progress(PhaseManifest)
	if el := elapsed(opts.Now(), started); el > opts.MaxDuration {
		return nil, fmt.Errorf("backup of volume %q: %v since loading the index, more than %v: %w", opts.Volume, el, opts.MaxDuration, ErrTooSlow)
	}
	key := ManifestKey(m.Volume, m.ID)
	encode := func() ([]byte, error) {
		if b.k != nil {
			m.MAC = b.k.manifestMAC(m)
		}
		return EncodeManifest(m)
	}
	enc, err := encode()
	if err != nil {
		return nil, fmt.Errorf("backup of volume %q: %w", opts.Volume, err)
	}
	// The manifest counts its own bytes; its length can change with that
	// number, so settle it.
	base := m.Stats.BytesUploaded
	for range 3 {
		m.Stats.BytesUploaded = base + int64(len(enc))
		if enc, err = encode(); err != nil {
			return nil, fmt.Errorf("backup of volume %q: %w", opts.Volume, err)
		}
		if base+int64(len(enc)) == m.Stats.BytesUploaded {
			break
		}
	}
	err = r.t.PutIfAbsent(ctx, key, bytes.NewReader(enc), int64(len(enc)))
	if errors.Is(err, plugins.ErrUnsupported) {
		// The id is 128 random bits: a plain Put cannot replace another
		// backup's manifest.
		err = r.t.Put(ctx, key, bytes.NewReader(enc), int64(len(enc)))
	}
	if errors.Is(err, plugins.ErrAlreadyExists) {
		// The id is 128 random bits, so this is our own Put landing
		// before a retry of it (an SDK's retry of a conditional Put):
		// go on if it holds our bytes. If not, it is not ours: leave it.
		back, gerr := r.getAll(ctx, key, maxManifestSize)
		switch {
		case gerr == nil && bytes.Equal(back, enc):
			err = nil
		case gerr == nil:
			return nil, fmt.Errorf("backup of volume %q: writing manifest %s: another object holds the key: %w", opts.Volume, key, err)
		default:
			// Probably ours, but unconfirmed: withdraw it.
			err = fmt.Errorf("%w; reading it back: %w", err, gerr)
		}
	}
	if err != nil {
		// A Put that failed may still land (a lost reply).
		return nil, r.withdraw(ctx, key, fmt.Errorf("backup of volume %q: writing manifest %s: %w", opts.Volume, key, err))
	}
	// The deadline holds for the manifest being visible, not for starting
	// its Put: a Put that took long may have let a GC sweep a pack this
	// backup deduplicated against, so a late manifest is withdrawn.
	if el := elapsed(opts.Now(), started); el > opts.MaxDuration {
		return nil, r.withdraw(ctx, key, fmt.Errorf("backup of volume %q: manifest %s written %v after loading the index, more than %v: %w", opts.Volume, key, el, opts.MaxDuration, ErrTooSlow))
	}
	back, err := r.getAll(ctx, key, maxManifestSize)
	if err == nil {
		if _, err = DecodeManifest(back); err == nil && !bytes.Equal(back, enc) {
			err = fmt.Errorf("it differs from the one written: %w", ErrMismatch)
		}
	}
	if err != nil {
		return nil, r.withdraw(ctx, key, fmt.Errorf("backup of volume %q: reading back manifest %s: %w", opts.Volume, key, err))
	}
	b.progress(PhaseDone)
	log.Info("backup acknowledged", "id", m.ID, "key", key, "scanned", m.Stats.BytesScanned, "uploaded", m.Stats.BytesUploaded, "parent", m.Parent)
	return &Result{ID: m.ID, ManifestKey: key, Digest: m.Digest, Manifest: m, Stats: m.Stats}, nil
}

// elapsed is the time from started to now by the monotonic clock or by
// the wall clock, whichever is longer: the monotonic clock stops while the
// host is suspended, and GC, on another host, goes on.
func elapsed(now, started time.Time) time.Duration {
	return max(now.Sub(started), now.Round(0).Sub(started.Round(0)))
}

// withdraw deletes the manifest under key of a backup that will not be
// acknowledged, and returns err saying whether that worked. It does not
// use ctx's cancellation (the caller giving up is a common reason to be
// here), but gives up after a minute.
func (r *Repository) withdraw(ctx context.Context, key string, err error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	var derr error
	for attempt := range 3 {
		if attempt > 0 {
			select {
			case <-time.After(time.Duration(attempt) * time.Second):
			case <-ctx.Done():
			}
		}
		if derr = r.t.Delete(ctx, []string{key}); derr == nil {
			return fmt.Errorf("%w (manifest withdrawn)", err)
		}
	}
	r.log.Error("withdrawing the manifest of a failed backup", "key", key, "err", derr)
	return fmt.Errorf("%w; withdrawing manifest %s failed, so it may remain though not acknowledged (delete it with backup rm): %v", err, key, derr)
}

func (r *Repository) checkBackupOptions(o *BackupOptions) error {
	switch {
	case !ValidName(o.Volume):
		return fmt.Errorf("volume name %q: %w", o.Volume, ErrInvalid)
	case !ValidName(o.Snapshot):
		return fmt.Errorf("volume %q: snapshot name %q: %w", o.Volume, o.Snapshot, ErrInvalid)
	case o.Source == nil:
		return fmt.Errorf("volume %q: no source: %w", o.Volume, ErrInvalid)
	case o.Parent != "" && parseHex(o.Parent, make([]byte, 16)) != nil:
		return fmt.Errorf("volume %q: parent %q is not a backup id: %w", o.Volume, o.Parent, ErrInvalid)
	case o.Parent != "" && o.Changed == nil && !o.Full:
		return fmt.Errorf("volume %q: an incremental backup needs the changed extents: %w", o.Volume, ErrInvalid)
	}
	if s := o.Source.Size(); s <= 0 || s%4096 != 0 || s > MaxVolumeSize {
		return fmt.Errorf("volume %q: size %d is not a positive multiple of 4096 up to %d: %w", o.Volume, s, int64(MaxVolumeSize), ErrInvalid)
	}
	for _, e := range o.Changed {
		if e.Offset < 0 || e.Length < 0 {
			return fmt.Errorf("volume %q: changed extent %d+%d: %w", o.Volume, e.Offset, e.Length, ErrInvalid)
		}
	}
	if o.MaxDuration <= 0 {
		o.MaxDuration = DefaultMaxDuration
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.Tags = maps.Clone(o.Tags)
	return nil
}

// backupRun is the state of one Backup.
type backupRun struct {
	r      *Repository
	opts   BackupOptions
	k      *Key
	size   int64
	idx    *chunkIndex
	parent *Manifest
	// pageChunks is the map page size: PageChunks, or the parent's.
	pageChunks int

	scanned, uploaded, chunks atomic.Int64
}

func (b *backupRun) progress(ph Phase) {
	if b.opts.Progress == nil {
		return
	}
	b.opts.Progress(Progress{Op: "backup", Volume: b.opts.Volume, Phase: ph, BytesTotal: b.size,
		Position: min(b.chunks.Load()*ChunkSize, b.size), BytesScanned: b.scanned.Load(), BytesUploaded: b.uploaded.Load(), Chunks: b.chunks.Load(), Time: time.Now()})
}

// pageJob is one map page's worth of work moving through the pipeline.
type pageJob struct {
	i      int
	first  int64     // first chunk
	n      int       // chunks in the page
	buf    []byte    // the page's data; only dirty chunks are filled
	dirty  []bool    // which chunks were read
	prev   page      // the parent's entries (IDs nil if none)
	prevID string    // the parent's page id
	ids    []ChunkID // results
	leaves []ChunkID
	recs   [][]byte // new records (nil: zero or known), in arena
	arena  []byte   // the page's new records back to back
	done   chan struct{}
	err    error
}

// run reads, hashes and uploads, and returns the manifest to write.
func (b *backupRun) run(ctx context.Context) (*Manifest, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	nChunks := (b.size + ChunkSize - 1) / ChunkSize
	pc := int64(b.pageChunks)
	nPages := int((nChunks + pc - 1) / pc)
	dirty := b.dirtyMap(nChunks)

	var parentPages <-chan pageResult
	if b.parent != nil {
		parentPages = b.r.pageStream(ctx, b.parent, b.k, 0, 4)
	}
	up := newUploader(ctx, b.r, b.opts.Volume, &b.uploaded)
	defer up.abort()

	work := make(chan *pageJob)
	order := make(chan *pageJob, b.r.opts.Workers+2)
	var wg sync.WaitGroup
	for range b.r.opts.Workers {
		wg.Go(func() {
			var s recordScratch
			for j := range work {
				// Workers read too: an incremental's reads are small and
				// scattered, so latency, not bandwidth, bounds them.
				if j.err = b.readPage(ctx, j, dirty); j.err == nil {
					b.hashPage(j, &s)
				}
				close(j.done)
			}
		})
	}
	// A page's read buffer and its record arena are reused once the
	// collector has copied its records into a pack.
	bufs := sync.Pool{New: func() any { s := make([]byte, ChunkSize*b.pageChunks); return &s }}
	// Arenas are sized by hashPage for a page's dirty chunks: an
	// incremental's pages hold few new records.
	arenas := sync.Pool{New: func() any { return new([]byte) }}

	// Producer: hand out the pages in order, with the parent's entries.
	var prodErr error
	go func() {
		defer close(order)
		defer close(work)
		for i := range nPages {
			j := &pageJob{i: i, first: int64(i) * pc, done: make(chan struct{})}
			j.n = int(min(pc, nChunks-j.first))
			if parentPages != nil && i < len(b.parent.Pages) {
				var pr pageResult
				select {
				case pr = <-parentPages:
				case <-ctx.Done():
					prodErr = context.Cause(ctx)
					return
				}
				if pr.err != nil {
					prodErr = pr.err
					return
				}
				j.prev, j.prevID = pr.p, b.parent.Pages[i]
			}
			j.buf = (*bufs.Get().(*[]byte))[:j.n*ChunkSize]
			j.arena = (*arenas.Get().(*[]byte))[:0]
			select {
			case order <- j:
			case <-ctx.Done():
				prodErr = context.Cause(ctx)
				return
			}
			work <- j
		}
	}()

	m := &Manifest{Format: manifestFormat, Version: 1, Volume: b.opts.Volume, ID: newBackupID(), Snapshot: b.opts.Snapshot,
		SnapshotCreated: b.opts.SnapshotCreated.UTC(), Created: b.opts.Now().UTC(), Size: b.size, ChunkSize: ChunkSize, PageChunks: b.pageChunks, Tags: b.opts.Tags,
		Pages: make([]string, 0, nPages)}
	if b.parent != nil {
		m.Parent = b.parent.ID
	}
	if b.k != nil {
		m.Encrypted, m.KeyID = true, b.k.ID()
	}
	dg := newDigest(b.size, ChunkSize)
	pending := map[ChunkID]bool{}
	var err error
	for j := range order {
		if err != nil {
			continue // drain
		}
		<-j.done
		if j.err != nil {
			err = j.err
			cancel(err)
			continue
		}
		for c := range j.n {
			id := j.ids[c]
			dg.add(j.first+int64(c), j.leaves[c])
			switch {
			case !j.dirty[c]:
			case id.IsZero():
				m.Stats.ChunksZero++
			case j.recs[c] == nil || pending[id]:
				m.Stats.ChunksDedup++
			default:
				pending[id] = true
				m.Stats.ChunksNew++
				err = up.add(id, j.recs[c])
			}
			if err != nil {
				break
			}
		}
		if err != nil {
			cancel(err)
			continue
		}
		if prev, err := ParseChunkID(j.prevID); err == nil && !b.idx.candPages[prev] &&
			slices.Equal(j.ids, j.prev.IDs) && (b.k == nil || slices.Equal(j.leaves, j.prev.Leaves)) {
			m.Pages = append(m.Pages, j.prevID) // unchanged: reuse the parent's page
		} else {
			pg := page{IDs: j.ids}
			if b.k != nil {
				pg.Leaves = j.leaves
			}
			obj, pid := encodePage(pg, b.k)
			m.Pages = append(m.Pages, pid.String())
			m.Stats.PagesUploaded++
			up.putPage(pid, obj)
		}
		b.chunks.Add(int64(j.n))
		b.progress(PhaseScan)
		buf := j.buf[:cap(j.buf)]
		bufs.Put(&buf)
		arena := j.arena[:0]
		arenas.Put(&arena)
		j.buf, j.arena, j.recs = nil, nil, nil
	}
	wg.Wait()
	if err == nil {
		err = prodErr
	}
	if err != nil {
		return nil, err
	}
	b.progress(PhaseFlush)
	if err := up.finish(); err != nil {
		return nil, err
	}
	m.Digest = dg.hex()
	m.Stats.BytesScanned = b.scanned.Load()
	m.Stats.BytesUploaded = b.uploaded.Load()
	return m, nil
}

// bitset is a set of chunk numbers (1 bit per chunk: 16 MiB for 1 TiB).
type bitset []uint64

func (b bitset) set(i int64)      { b[i>>6] |= 1 << (i & 63) }
func (b bitset) has(i int64) bool { return b[i>>6]&(1<<(i&63)) != 0 }

// dirtyMap returns which chunks must be read: all for a full backup; for
// an incremental the chunks Changed touches and those the parent does not
// cover with the same length.
func (b *backupRun) dirtyMap(nChunks int64) bitset {
	d := make(bitset, (nChunks+63)/64)
	if b.parent == nil {
		for i := range d {
			d[i] = ^uint64(0)
		}
		return d
	}
	for _, e := range b.opts.Changed {
		end := min(e.Offset+e.Length, b.size)
		for c := e.Offset / ChunkSize; c*ChunkSize < end; c++ {
			d.set(c)
		}
	}
	if b.parent.Size != b.size {
		for c := range nChunks {
			if end := (c + 1) * ChunkSize; end > b.parent.Size || end > b.size {
				d.set(c)
			}
		}
	}
	return d
}

// readPage fills j.dirty and reads the dirty chunks of page j: the parent's
// entries are reused where the chunk did not change and is still live.
func (b *backupRun) readPage(ctx context.Context, j *pageJob, dirty bitset) error {
	j.dirty = make([]bool, j.n)
	for c := range j.n {
		d := dirty.has(j.first + int64(c))
		if !d && j.prev.IDs == nil {
			d = true
		}
		if !d {
			if id := j.prev.IDs[c]; !id.IsZero() && !b.idx.live(id) {
				d = true // its pack is gone or a GC candidate: upload again
			}
		}
		j.dirty[c] = d
	}
	for c := 0; c < j.n; {
		if !j.dirty[c] {
			c++
			continue
		}
		e := c
		for e < j.n && j.dirty[e] {
			e++
		}
		off := (j.first + int64(c)) * ChunkSize
		end := min((j.first+int64(e))*ChunkSize, b.size)
		if err := b.readRange(ctx, j.buf[c*ChunkSize:], off, end); err != nil {
			return err
		}
		c = e
	}
	return nil
}

// readRange reads [off, end) into buf, reading only data extents and
// zeroing the rest.
func (b *backupRun) readRange(ctx context.Context, buf []byte, off, end int64) error {
	exts, err := b.opts.Source.Extents(ctx, off, end-off)
	if err != nil {
		return fmt.Errorf("extents of %d+%d: %w", off, end-off, err)
	}
	pos := off
	read := func(from, to int64) error {
		if to <= from {
			return nil
		}
		n, err := b.opts.Source.ReadAt(ctx, buf[from-off:to-off], from)
		if err != nil && !(errors.Is(err, io.EOF) && int64(n) == to-from) {
			return fmt.Errorf("read %d+%d: %w", from, to-from, err)
		}
		b.scanned.Add(to - from)
		return nil
	}
	for _, e := range exts {
		s, t := max(e.Offset, pos), min(e.Offset+e.Length, end)
		if t <= s {
			continue
		}
		if err := read(pos, s); err != nil { // not covered: data
			return err
		}
		if e.Kind == blockdev.ExtentData {
			if err := read(s, t); err != nil {
				return err
			}
		} else {
			clear(buf[s-off : t-off])
		}
		pos = t
	}
	return read(pos, end)
}

// hashPage computes ids, leaves and new records for page j; the records
// are appended to j.arena, sized first for the page's dirty chunks.
func (b *backupRun) hashPage(j *pageJob, s *recordScratch) {
	j.ids = make([]ChunkID, j.n)
	j.leaves = make([]ChunkID, j.n)
	j.recs = make([][]byte, j.n)
	dirty := 0
	for _, d := range j.dirty {
		if d {
			dirty++
		}
	}
	if need := dirty * maxRecordSize(ChunkSize); cap(j.arena) < need {
		j.arena = make([]byte, 0, need)
	}
	for c := range j.n {
		if !j.dirty[c] {
			j.ids[c] = j.prev.IDs[c]
			if j.prev.Leaves != nil {
				j.leaves[c] = j.prev.Leaves[c]
			} else {
				j.leaves[c] = j.ids[c]
			}
			continue
		}
		l := int(min(ChunkSize, b.size-(j.first+int64(c))*ChunkSize))
		data := j.buf[c*ChunkSize : c*ChunkSize+l]
		if allZero(data) {
			continue
		}
		id, leaf := chunkIDs(b.k, data)
		j.ids[c], j.leaves[c] = id, leaf
		if b.opts.Full || !b.idx.live(id) {
			at := len(j.arena)
			j.arena = encodeRecordScratch(j.arena, b.k, id, data, s)
			j.recs[c] = j.arena[at:len(j.arena):len(j.arena)]
		}
	}
}

func allZero(p []byte) bool {
	for len(p) >= 8 {
		if p[0]|p[1]|p[2]|p[3]|p[4]|p[5]|p[6]|p[7] != 0 {
			return false
		}
		p = p[8:]
	}
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}
