package snapshot

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

const nStripes = 64

// stripeShift groups 64 blocks (256 KiB) per write stripe.
const stripeShift = 6

// Volume is an open volume: the chain's writable head plus its snapshots.
// It implements io.ReaderAt and io.WriterAt over its current content and is
// safe for many concurrent callers.
//
// Concurrency: reads and writes run in parallel; writes to overlapping
// 256 KiB stripes are serialised (a partial-block write is a
// read-modify-write), and a read waits for writes in flight on its stripes,
// so it never returns a block half overwritten in place; Snapshot, Revert and Grow hold I/O for the few
// fsyncs that make them durable; DeleteSnapshot merges online, holding one
// stripe at a time. Administrative calls are serialised with each other.
type Volume struct {
	s    *Store
	name string

	opMu sync.Mutex // serialises Snapshot, DeleteSnapshot, Revert, Grow, Close

	mu     sync.RWMutex // I/O holds it shared; chain changes hold it exclusively
	closed bool
	failed atomic.Pointer[error] // sticky: set when a flush failed
	meta   *volumeMeta
	chain  []*layer // bottom first; the last is the head
	head   *layer
	hslot  uint32 // head's slot in ci
	size   int64

	ci chainIndex // ci.mu also guards dirty and sums

	// dirty holds the head blocks written since the last flush (by kind);
	// dirtyBlocks counts the blocks marked in it (an over-estimate when
	// writes overlap partly: it only decides when to flush). Checksums of
	// dirty data blocks are computed when they are flushed, not on every
	// write.
	dirty       *extMap
	dirtyBlocks uint64
	// dirtySince is when the dirty set last became non-empty (UnixNano;
	// guarded by ci.mu).
	dirtySince int64

	stripes [nStripes]sync.RWMutex
	flushMu sync.Mutex
	bgFlush atomic.Bool
	enc     *logEncoder // guarded by flushMu
	readBuf []byte      // guarded by flushMu
}

// Background flushes bound the dirty set (an extent map: small unless the
// writes are scattered) without forcing writes to disk speed: like the kernel's
// own writeback, dirty data may stay in the page cache for dirtyExpire
// before the store syncs it, unless more than dirtyMaxBlocks (4 GiB) are
// dirty. Durability is unchanged: a write is durable after a Flush or FUA,
// never later than that. Small dirty sets are left to the next Flush.
const (
	dirtyMinBlocks = 1 << 16 // 256 MiB
	dirtyMaxBlocks = 1 << 20 // 4 GiB
	dirtyExpire    = 30 * time.Second
)

func (v *Volume) load(m *volumeMeta) error {
	v.meta = m
	v.size = m.Size
	v.enc = newLogEncoder()
	var clean bool
	for i, lm := range m.Layers {
		isHead := i == len(m.Layers)-1
		l, c, err := v.s.acquire(lm.id, isHead)
		if err != nil {
			v.releaseChain()
			return err
		}
		v.chain = append(v.chain, l)
		clean = c
	}
	v.head = v.chain[len(v.chain)-1]
	v.hslot = uint32(len(v.chain) - 1)
	v.ci.build(v.chain)
	v.dirty, v.dirtyBlocks = newExtMap(), 0
	if !clean {
		if err := v.recoverHead(); err != nil {
			v.releaseChain()
			return err
		}
	}
	enc := newLogEncoder()
	enc.marker(recOpen)
	if err := v.head.appendLog(enc.bytes()); err != nil {
		v.releaseChain()
		return err
	}
	return nil
}

// recoverHead runs after an unclean shutdown. Blocks the head already
// held may have been overwritten in place after the last flush, so their
// logged checksums can be stale; rehash every data block and log the
// corrections. The cost is proportional to the head's data.
func (v *Volume) recoverHead() error {
	h := v.head
	sums, err := h.sums(nil)
	if err != nil {
		return err
	}
	buf := make([]byte, 256*BlockSize)
	enc := newLogEncoder()
	fixed := 0
	for _, r := range h.m.runs() {
		if r.val != kindData {
			continue
		}
		for b := r.start; b < r.end(); {
			n := min(r.end()-b, 256)
			p := buf[:n*BlockSize]
			if err := h.readAt(p, int64(b)<<blockShift); err != nil {
				return fmt.Errorf("recover head: %w", err)
			}
			for i := uint64(0); i < n; i++ {
				sum := blockSum(p[i*BlockSize : (i+1)*BlockSize])
				if old, ok := sums[b+i]; !ok || old != sum {
					enc.extent(b+i, 1, kindData, func(uint64) uint64 { return sum })
					fixed++
				}
			}
			b += n
		}
	}
	if fixed == 0 {
		return nil
	}
	v.s.log.Info("recovered head after unclean shutdown", "volume", v.name, "layer", h.id.String(), "rehashed", fixed)
	// The sums describe what the data file holds now, possibly only in the
	// page cache: make that durable before the log says so.
	if err := h.syncData(); err != nil {
		return fmt.Errorf("recover head: %w", err)
	}
	return h.appendLog(enc.bytes())
}

func (v *Volume) releaseChain() {
	for _, l := range v.chain {
		v.s.release(l)
	}
	v.chain = nil
}

// Name returns the volume's name.
func (v *Volume) Name() string { return v.name }

// Size returns the volume's size in bytes.
func (v *Volume) Size() int64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.size
}

// Close flushes the volume, marks its head cleanly closed and releases it.
// It is idempotent.
func (v *Volume) Close() error {
	v.opMu.Lock()
	defer v.opMu.Unlock()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	err := v.flushLocked()
	if err == nil {
		enc := newLogEncoder()
		enc.marker(recClean)
		err = v.head.appendLog(enc.bytes())
	}
	v.closed = true
	v.releaseChain()
	v.s.mu.Lock()
	delete(v.s.open, v.name)
	v.s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("volume %q: close: %w", v.name, err)
	}
	return nil
}

// usable reports why I/O cannot proceed; callers hold v.mu.
func (v *Volume) usable() error {
	if v.closed {
		return fmt.Errorf("volume %q: %w", v.name, ErrClosed)
	}
	if f := v.failed.Load(); f != nil {
		return fmt.Errorf("volume %q: an earlier flush or metadata update failed; reopen to recover: %w", v.name, *f)
	}
	return nil
}

// writeMeta commits nm as the volume's metadata. An update whose outcome
// after a crash is unknown fails the volume until it is reopened: it can
// go on from neither chain, since the one on disk may be the other.
func (v *Volume) writeMeta(nm *volumeMeta) error {
	err := v.s.writeMeta(nm)
	if errors.Is(err, errMetaUncertain) {
		v.failed.Store(&err)
		v.s.log.Error("metadata update uncertain; volume refuses I/O until reopened", "volume", v.name, "err", err)
	}
	return err
}

// SnapshotInfo describes a snapshot.
type SnapshotInfo struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// Size is the volume size captured by the snapshot.
	Size int64 `json:"size"`
	// Owned is the bytes of data held by the snapshot's own layer (written
	// after the previous snapshot, not visible through a later one alone).
	Owned int64 `json:"owned"`
}

// Snapshots lists the volume's snapshots, oldest first.
func (v *Volume) Snapshots() []SnapshotInfo {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.closed {
		return nil // its chain is released
	}
	var out []SnapshotInfo
	for i, lm := range v.meta.Layers[:len(v.meta.Layers)-1] {
		if lm.Snapshot == "" {
			continue
		}
		out = append(out, SnapshotInfo{
			Name:    lm.Snapshot,
			Created: lm.Created,
			Size:    lm.Size,
			Owned:   int64(v.chain[i].ownedBlocks()) * BlockSize,
		})
	}
	return out
}

// SnapshotCreated returns the creation time of snapshot name, which with
// the name identifies it (cheap, unlike Snapshots).
func (v *Volume) SnapshotCreated(name string) (time.Time, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if pos := v.meta.findSnapshot(name); pos >= 0 {
		return v.meta.Layers[pos].Created, true
	}
	return time.Time{}, false
}

// Depth returns the number of layers in the chain, head included.
func (v *Volume) Depth() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return len(v.chain)
}

// Snapshot seals the head as snapshot name and starts a new empty head. It
// is O(1) in the volume size and the data written: it flushes what is
// dirty, then writes the new chain. Every write acknowledged before it is
// in the snapshot and none that starts after it returns.
func (v *Volume) Snapshot(ctx context.Context, name string) error {
	if err := checkName("snapshot", name); err != nil {
		return err
	}
	v.opMu.Lock()
	defer v.opMu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	v.mu.RLock()
	err := v.usable()
	exists := err == nil && v.meta.findSnapshot(name) >= 0
	v.mu.RUnlock()
	if err != nil {
		return err
	}
	if exists {
		return fmt.Errorf("volume %q: snapshot %q: %w", v.name, name, ErrExists)
	}
	nl, err := v.s.newLayer()
	if err != nil {
		return fmt.Errorf("volume %q: snapshot %q: %w", v.name, name, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.flushLocked(); err != nil {
		v.s.release(nl)
		return fmt.Errorf("volume %q: snapshot %q: %w", v.name, name, err)
	}
	now := time.Now().UTC()
	nm := v.meta.clone()
	h := nm.head()
	h.Snapshot, h.Created, h.Size = name, now, v.size
	h.LogSize = v.head.syncedLogSize()
	nm.Layers = append(nm.Layers, layerMeta{ID: nl.id.String(), Created: now, id: nl.id})
	if err := v.writeMeta(nm); err != nil {
		v.s.release(nl)
		return fmt.Errorf("volume %q: snapshot %q: %w", v.name, name, err)
	}
	v.meta = nm
	v.chain = append(v.chain, nl)
	v.head = nl
	v.ci.mu.Lock()
	v.ci.slots = append(v.ci.slots, nl)
	v.hslot = uint32(len(v.ci.slots) - 1)
	v.ci.mu.Unlock()
	return nil
}

// Revert makes the volume's content that of snapshot name again. The head
// and every snapshot newer than name are discarded (like zfs rollback -r);
// the volume size becomes the snapshot's.
func (v *Volume) Revert(ctx context.Context, name string) error {
	v.opMu.Lock()
	defer v.opMu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	v.mu.RLock()
	err := v.usable()
	pos := -1
	if err == nil {
		pos = v.meta.findSnapshot(name)
	}
	v.mu.RUnlock()
	if err != nil {
		return err
	}
	if pos < 0 {
		return fmt.Errorf("volume %q: snapshot %q: %w", v.name, name, ErrNotFound)
	}
	nl, err := v.s.newLayer()
	if err != nil {
		return fmt.Errorf("volume %q: revert to %q: %w", v.name, name, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	nm := v.meta.clone()
	nm.Layers = append(nm.Layers[:pos+1], layerMeta{ID: nl.id.String(), Created: time.Now().UTC(), id: nl.id})
	nm.Size = nm.Layers[pos].Size
	if err := v.writeMeta(nm); err != nil {
		v.s.release(nl)
		return fmt.Errorf("volume %q: revert to %q: %w", v.name, name, err)
	}
	dropped := append([]*layer(nil), v.chain[pos+1:]...)
	v.meta = nm
	v.size = nm.Size
	v.chain = append(v.chain[:pos+1:pos+1], nl)
	v.head = nl
	v.ci.mu.Lock()
	v.ci.build(v.chain)
	v.hslot = uint32(len(v.chain) - 1)
	v.dirty, v.dirtyBlocks = newExtMap(), 0
	v.ci.mu.Unlock()
	for _, l := range dropped {
		v.s.release(l)
	}
	return nil
}

// Grow enlarges the volume to size bytes (a multiple of BlockSize). The
// new range reads as zeros.
func (v *Volume) Grow(ctx context.Context, size int64) error {
	if err := checkSize(size); err != nil {
		return fmt.Errorf("volume %q: grow: %w", v.name, err)
	}
	v.opMu.Lock()
	defer v.opMu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.usable(); err != nil {
		return err
	}
	if size < v.size {
		return fmt.Errorf("volume %q: grow to %d: smaller than current size %d (shrinking is not supported): %w", v.name, size, v.size, ErrInvalidArgument)
	}
	if size == v.size {
		return nil
	}
	nm := v.meta.clone()
	nm.Size = size
	if err := v.writeMeta(nm); err != nil {
		return fmt.Errorf("volume %q: grow: %w", v.name, err)
	}
	v.meta = nm
	v.size = size
	return nil
}

// Changed returns the byte ranges written between snapshot from and
// snapshot to, with the kind each holds in to. An empty from means the
// empty volume; an empty to means the current head. The cost is
// proportional to the number of extents in the layers between them, not to
// the volume size. The result may over-report (never under-report).
func (v *Volume) Changed(ctx context.Context, from, to string) ([]Extent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	if err := v.usable(); err != nil {
		return nil, err
	}
	fromPos, toPos := -1, len(v.chain)-1
	if from != "" {
		if fromPos = v.meta.findSnapshot(from); fromPos < 0 {
			return nil, fmt.Errorf("volume %q: snapshot %q: %w", v.name, from, ErrNotFound)
		}
	}
	if to != "" {
		if toPos = v.meta.findSnapshot(to); toPos < 0 {
			return nil, fmt.Errorf("volume %q: snapshot %q: %w", v.name, to, ErrNotFound)
		}
	}
	if fromPos >= toPos {
		return nil, fmt.Errorf("volume %q: changed from %q to %q: from is not older than to: %w", v.name, from, to, ErrInvalidArgument)
	}
	u := newExtMap()
	// The head's map is guarded by ci.mu as well as its own lock.
	v.ci.mu.RLock()
	for _, l := range v.chain[fromPos+1 : toPos+1] {
		l.mu.RLock()
		l.m.each(func(r run) bool {
			u.set(r.start, r.n, r.val)
			return true
		})
		l.mu.RUnlock()
	}
	v.ci.mu.RUnlock()
	limit := uint64(v.size) >> blockShift
	if to != "" {
		limit = uint64(v.meta.Layers[toPos].Size) >> blockShift
	}
	out := make([]Extent, 0, u.len())
	u.ascend(0, limit, func(r run) bool {
		out = append(out, Extent{Offset: int64(r.start) << blockShift, Length: int64(r.n) << blockShift, Kind: kindExtent(r.val)})
		return true
	})
	return out, nil
}

// Extents describes [off, off+length) of the current content as data,
// zero and hole ranges, clipped to the volume.
func (v *Volume) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	if err := v.usable(); err != nil {
		return nil, err
	}
	if off < 0 || length < 0 {
		return nil, fmt.Errorf("volume %q: extents [%d,+%d): %w", v.name, off, length, ErrInvalidArgument)
	}
	n, _ := clampRange(off, int(min(length, v.size)), v.size)
	return v.ci.extents(off, int64(n)), nil
}
