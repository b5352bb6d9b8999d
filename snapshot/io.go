package snapshot

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/sys/unix"
)

// blockSum is the checksum recorded for a data block.
func blockSum(b []byte) uint64 { return xxhash.Sum64(b) }

var blockPool = sync.Pool{New: func() any { b := make([]byte, BlockSize); return &b }}

var zeroBlock [BlockSize]byte

// maxCommit is the most blocks a flush reads back and checksums at once
// (its buffer and the sums on the stack).
const maxCommit = 256

// ReadAt reads len(p) bytes at off. Like io.ReaderAt it returns io.EOF
// when the range reaches past the end of the volume.
func (v *Volume) ReadAt(p []byte, off int64) (int, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if err := v.usable(); err != nil {
		return 0, err
	}
	n, err := clampRange(off, len(p), v.size)
	if err != nil {
		return 0, fmt.Errorf("volume %q: read: %w", v.name, err)
	}
	if n == 0 {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	// Shared stripe locks: the head's blocks are overwritten in place, and
	// the page cache does not make a pread atomic against a pwrite.
	locked := v.stripeMask(uint64(off)>>blockShift, (uint64(off)+uint64(n)+BlockSize-1)>>blockShift)
	for m := locked; m != 0; m &= m - 1 {
		v.stripes[bits.TrailingZeros64(m)].RLock()
	}
	err = v.ci.read(p[:n], off)
	for m := locked; m != 0; m &= m - 1 {
		v.stripes[bits.TrailingZeros64(m)].RUnlock()
	}
	if err != nil {
		return 0, fmt.Errorf("volume %q: read: %w", v.name, err)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// checkWrite validates a write-style range; callers hold v.mu.
func (v *Volume) checkWrite(op string, off, n int64) error {
	if err := v.usable(); err != nil {
		return err
	}
	if off < 0 || n < 0 {
		return fmt.Errorf("volume %q: %s [%d,+%d): %w", v.name, op, off, n, ErrInvalidArgument)
	}
	if off+n > v.size || off+n < off {
		return fmt.Errorf("volume %q: %s [%d,+%d) past size %d: %w", v.name, op, off, n, v.size, ErrOutOfRange)
	}
	return nil
}

// lockStripes locks the stripes covering blocks [start, end) in ascending
// stripe order (so two ranges that wrap around the table cannot deadlock)
// and returns the set it locked.
func (v *Volume) lockStripes(start, end uint64) uint64 {
	mask := v.stripeMask(start, end)
	for m := mask; m != 0; m &= m - 1 {
		v.stripes[bits.TrailingZeros64(m)].Lock()
	}
	return mask
}

// stripeMask returns the set of stripes covering blocks [start, end), end > start.
func (v *Volume) stripeMask(start, end uint64) uint64 {
	first, last := start>>stripeShift, (end-1)>>stripeShift
	if last-first >= nStripes-1 {
		return ^uint64(0)
	}
	var mask uint64
	for s := first; s <= last; s++ {
		mask |= 1 << (s % nStripes)
	}
	return mask
}

func (v *Volume) unlockStripes(mask uint64) {
	for m := mask; m != 0; m &= m - 1 {
		v.stripes[bits.TrailingZeros64(m)].Unlock()
	}
}

// WriteAt writes p at off. The range must lie inside the volume; the write
// is durable after a later Flush.
func (v *Volume) WriteAt(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	if err := v.checkWrite("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	end := off + int64(len(p))
	locked := v.lockStripes(uint64(off)>>blockShift, (uint64(end)+BlockSize-1)>>blockShift)
	err := v.writeLocked(p, off)
	v.unlockStripes(locked)
	if err != nil {
		return 0, fmt.Errorf("volume %q: write: %w", v.name, err)
	}
	v.maybeFlush()
	return len(p), nil
}

// writeLocked writes p at off into the head. Callers hold v.mu shared and
// the stripes of the range.
func (v *Volume) writeLocked(p []byte, off int64) error {
	// Leading partial block.
	if r := off % BlockSize; r != 0 {
		n := min(int64(len(p)), BlockSize-r)
		if err := v.writePartial(p[:n], off); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	// Whole blocks: in folioSize pieces into a region regroup just
	// dropped from the page cache, in freshPiece pieces into a range the
	// head holds no data for, elsewhere in one write into the folios the
	// range has.
	if whole := int64(len(p)) / BlockSize * BlockSize; whole > 0 {
		piece := whole
		start := uint64(off) >> blockShift
		if whole >= regroupSize && v.regroup(off, whole) {
			piece = folioSize
		} else if whole > freshPiece && !v.head.holdsData(start, start+(uint64(whole)>>blockShift)) {
			piece = freshPiece
		}
		for done := int64(0); done < whole; done += piece {
			if err := v.head.writeAt(p[done:min(done+piece, whole)], off+done); err != nil {
				// The failed piece may have been written in part too.
				v.writeFailed(off, min(done+piece, whole))
				return err
			}
		}
		v.commitData(whole, off)
		p, off = p[whole:], off+whole
	}
	// Trailing partial block.
	if len(p) > 0 {
		return v.writePartial(p, off)
	}
	return nil
}

// regroupSize is the region of a head layer whose page cache a write
// covering it whole may drop first (regroup): the largest write the
// frontends pass on (NBD and FUSE requests of 1 MiB).
const regroupSize = 1 << 20

// folioSize is the size of the writes a regrouped region is written back
// in: the kernel sizes a new page-cache folio by the write that creates
// it, and 16 KiB folios are where both kinds of write stay fast. Measured
// on this project's VMs (a Go program, 1 GiB file, ext4, kernel 6.18;
// benchmarks/BOTTLENECKS.md nbd/write1m): with the page cache in folios of
// 4 KiB, 16, 64, 256 KiB and 1 MiB, random 4 KiB writes ran at 371k, 379k,
// 217k, 99k and 31k per second, and 1 MiB overwrites at 2.8, 5.9, 8.5, 9.8
// and 10.3 GB/s. Large folios cost small writes that much because the
// kernel counts a whole folio dirty for each write into it, and throttles
// writers by that count.
const folioSize = 16 << 10

// freshPiece is the largest write the store makes into a range the head
// holds no data for (new to it, or zeroed or trimmed, which are punched):
// larger writes there go in pieces of this size, because the kernel sizes
// the folios a write creates by the write (folioSize). Written whole, a
// head filled in large writes (an image copied in with nbdcopy's 256 KiB
// requests, a restore, a guest's sequential writes) kept large folios,
// and took random 4 KiB writes 3-4x slower: BenchmarkIO randwrite4k at
// depth 1, 18-24 us whole, 4.6-7.3 us in 64 KiB pieces, 4.7-5.2 us in 16
// KiB pieces; through NBD on a volume filled by nbdcopy, 58-66k, 72-75k
// and 83-86k IOPS (nbdkit on a copied file: 97-101k). 64 KiB and not 16:
// sequential 1 MiB overwrites of a range filled in 16 KiB pieces ran 2.5x
// slower than of one filled whole (199-208 against 75-87 us), in 64 KiB
// pieces 1.5x (123-136 us). Ranges holding data are not cut: splitting
// every large write cost FUSE's 1 MiB writes after random 4 KiB ones half
// their speed, the extra syscalls landing on folios that already exist
// (NOTES.md, 2026-11-27 ~12:30).
const freshPiece = 64 << 10

// regroup drops the page cache of each regroupSize region of the head
// that [off, off+n) covers whole, once per region and layer, when small
// writes brought blocks into the region (setHead marks it scattered) and
// it has no write since the last flush and no flush is running (so its
// pages are clean and can go); it reports whether it dropped any, and
// then the caller writes the range in folioSize pieces. Why: a new head that took small random
// writes after a snapshot is cached in 4 KiB folios, and every later
// large write into it walks 256 of them per MiB; rewritten in 16 KiB
// pieces the region comes back in 16 KiB folios, twice as fast for large
// writes and as fast for small ones (folioSize). Dirty pages cannot be
// dropped (fadvise only starts their writeback), so a region dirtied
// since the flush is left for a later write. A region the head got in
// large writes (a restored or copied image) is left as it is. Callers
// hold v.mu shared and the stripes of the range.
func (v *Volume) regroup(off, n int64) bool {
	dropped, held := false, false
	first := (off + regroupSize - 1) &^ (regroupSize - 1)
	for r := first; r+regroupSize <= off+n; r += regroupSize {
		i := uint64(r) / regroupSize
		if !v.head.wantsRegroup(i) {
			continue
		}
		if !held {
			// A flush in flight has taken the dirty set but may not
			// have synced its pages yet: a drop would free nothing
			// and still mark the region done for good. Leave the
			// regions to a later write. (TryLock: the flush takes
			// the stripes this write holds.)
			if !v.flushMu.TryLock() {
				return dropped
			}
			defer v.flushMu.Unlock()
			held = true
		}
		start, end := uint64(r)>>blockShift, uint64(r+regroupSize)>>blockShift
		v.ci.mu.RLock()
		dirty := false
		v.dirty.ascend(start, end, func(run) bool {
			dirty = true
			return false
		})
		v.ci.mu.RUnlock()
		if !dirty {
			// The stripes of the region are ours: no other write can
			// regroup it meanwhile.
			v.head.markRegrouped(i)
			v.head.dropCache(r, regroupSize)
			dropped = true
		}
	}
	return dropped
}

// writePartial writes less than a block: read the block as it reads now,
// patch it and write it whole to the head (the COW unit is one block).
func (v *Volume) writePartial(p []byte, off int64) error {
	bp := blockPool.Get().(*[]byte)
	defer blockPool.Put(bp)
	buf := *bp
	boff := off &^ (BlockSize - 1)
	if err := v.ci.read(buf, boff); err != nil {
		return err
	}
	copy(buf[off-boff:], p)
	if err := v.head.writeAt(buf, boff); err != nil {
		return err
	}
	v.commitData(BlockSize, boff)
	return nil
}

// writeFailed marks dirty the blocks of [off, off+n) that the head holds
// as data: a write that failed after writing them changed their bytes,
// which then read as written, and the next flush must log their checksums
// as they are now (once the head is sealed, its log's old checksums would
// make a scrub report them corrupt). Blocks the head does not hold are
// not in the index, so what the write left there is never read. Callers
// hold the stripes of the range.
func (v *Volume) writeFailed(off, n int64) {
	start, end := uint64(off)>>blockShift, uint64(off+n)>>blockShift
	var held []run
	v.head.mu.RLock()
	v.head.m.ascend(start, end, func(r run) bool {
		if s, e := max(r.start, start), min(r.end(), end); r.val == kindData && e > s {
			held = append(held, run{start: s, n: e - s})
		}
		return true
	})
	v.head.mu.RUnlock()
	v.ci.mu.Lock()
	defer v.ci.mu.Unlock()
	for _, r := range held {
		v.markDirty(r.start, r.n, kindData)
	}
}

// commitData records that the head now holds the n bytes of whole blocks
// at the block-aligned offset off. Their checksums are computed when they
// are flushed.
func (v *Volume) commitData(n, off int64) {
	start := uint64(off) >> blockShift
	v.ci.mu.Lock()
	v.setHead(start, uint64(n)>>blockShift, kindData)
	v.ci.mu.Unlock()
}

// setHead maps [start, start+n) to the head with kind in the index, the
// head's own map and the dirty set. Callers hold ci.mu exclusively.
func (v *Volume) setHead(start, n uint64, kind uint32) {
	end := start + n
	if val := slotVal(v.hslot, kind); !v.ci.idx.covers(start, end, val) {
		if n*BlockSize < regroupSize {
			// Possibly new blocks from a small write: small folios.
			v.head.markScattered(start*BlockSize/regroupSize, (end-1)*BlockSize/regroupSize)
		}
		v.ci.idx.set(start, n, val)
		v.head.mu.Lock()
		v.head.m.set(start, n, kind)
		v.head.mu.Unlock()
	}
	v.markDirty(start, n, kind)
}

// markDirty adds [start, start+n) with kind to the dirty set. Callers hold
// ci.mu exclusively.
func (v *Volume) markDirty(start, n uint64, kind uint32) {
	if v.dirty.covers(start, start+n, kind) {
		return
	}
	if v.dirty.len() == 0 {
		v.dirtySince = time.Now().UnixNano()
	}
	v.dirty.set(start, n, kind)
	v.dirtyBlocks += n
}

// Zero makes [off, off+length) read as zeros and report as allocated
// zeros. Whole blocks take no space; partial blocks are written.
func (v *Volume) Zero(off, length int64) error {
	return v.zeroRange("zero", off, length, kindZero)
}

// Trim discards [off, off+length): it then reads as zeros (never as an
// older layer's data) and reports as a hole.
func (v *Volume) Trim(off, length int64) error {
	return v.zeroRange("trim", off, length, kindTrim)
}

func (v *Volume) zeroRange(op string, off, length int64, kind uint32) error {
	if length == 0 {
		return nil
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	if err := v.checkWrite(op, off, length); err != nil {
		return err
	}
	end := off + length
	locked := v.lockStripes(uint64(off)>>blockShift, (uint64(end)+BlockSize-1)>>blockShift)
	defer v.unlockStripes(locked)
	fail := func(err error) error { return fmt.Errorf("volume %q: %s: %w", v.name, op, err) }
	first := (off + BlockSize - 1) &^ (BlockSize - 1)
	last := end &^ (BlockSize - 1)
	if first >= last {
		// No whole block: the range lies inside one or two blocks.
		if err := v.writeZeros(off, end); err != nil {
			return fail(err)
		}
		return nil
	}
	if err := v.writeZeros(off, first); err != nil {
		return fail(err)
	}
	if err := v.writeZeros(last, end); err != nil {
		return fail(err)
	}
	if err := v.head.punch(first, last-first); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		v.s.log.Warn("punching a trimmed range out of the head layer failed; its space stays in use", "volume", v.name, "offset", first, "length", last-first, "err", err)
	}
	v.ci.mu.Lock()
	v.setHead(uint64(first)>>blockShift, uint64(last-first)>>blockShift, kind)
	v.ci.mu.Unlock()
	return nil
}

// writeZeros writes zeros over [off, end), which lies within one block.
func (v *Volume) writeZeros(off, end int64) error {
	for off < end {
		n := min(end-off, BlockSize-off%BlockSize)
		if err := v.writePartial(zeroBlock[:n], off); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// Flush makes every write acknowledged before it durable.
func (v *Volume) Flush() error {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if err := v.usable(); err != nil {
		return err
	}
	if err := v.flushLocked(); err != nil {
		return fmt.Errorf("volume %q: flush: %w", v.name, err)
	}
	return nil
}

// flushLocked syncs the head's data, then appends the dirty map records to
// its log and syncs that. Callers hold v.mu (shared or exclusive).
func (v *Volume) flushLocked() error {
	v.flushMu.Lock()
	defer v.flushMu.Unlock()
	if f := v.failed.Load(); f != nil {
		return *f
	}
	v.ci.mu.Lock()
	d := v.dirty
	if d.len() == 0 {
		v.ci.mu.Unlock()
		return nil
	}
	v.dirty, v.dirtyBlocks = newExtMap(), 0
	v.ci.mu.Unlock()

	h := v.head
	// Checksum what the dirty data blocks hold now. A write racing this
	// flush puts its blocks in the next dirty set, whose flush logs their
	// new checksums; a crash in between is repaired by recoverHead, which
	// rehashes the head. Under Snapshot (I/O held) the sums are exact.
	v.enc.reset()
	err := v.encodeDirty(d)
	if err == nil {
		err = h.syncData()
	}
	if err == nil && !h.dirSynced {
		if err = syncDir(v.s.layerDir); err == nil {
			h.dirSynced = true
		}
	}
	if err == nil {
		err = h.appendLog(v.enc.bytes())
	}
	if err == nil {
		before := h.logSize
		if err = h.maybeCompact(v.s.layerDir); err == nil && h.logSize != before {
			v.s.log.Debug("compacted head log", "volume", v.name, "layer", h.id.String(), "from", before, "to", h.logSize)
		}
	}
	if err != nil {
		// After a failed fsync the page cache may have dropped the data
		// (fsyncgate): refuse further I/O until the volume is reopened.
		v.failed.Store(&err)
		v.s.log.Error("flush failed; volume refuses I/O until reopened", "volume", v.name, "err", err)
		return err
	}
	return nil
}

// encodeDirty encodes the records of dirty set d into v.enc, reading and
// checksumming its data blocks under the stripes' shared locks (so no
// block is read half overwritten). Callers hold flushMu.
func (v *Volume) encodeDirty(d *extMap) error {
	if v.readBuf == nil {
		v.readBuf = make([]byte, maxCommit*BlockSize)
	}
	var sums [maxCommit]uint64
	var err error
	d.each(func(r run) bool {
		if r.val != kindData {
			v.enc.extent(r.start, r.n, r.val, nil)
			return true
		}
		for b := r.start; b < r.end(); {
			n := min(r.end()-b, maxCommit)
			p := v.readBuf[:n*BlockSize]
			mask := v.stripeMask(b, b+n)
			for m := mask; m != 0; m &= m - 1 {
				v.stripes[bits.TrailingZeros64(m)].RLock()
			}
			err = v.head.readAt(p, int64(b)<<blockShift)
			for m := mask; m != 0; m &= m - 1 {
				v.stripes[bits.TrailingZeros64(m)].RUnlock()
			}
			if err != nil {
				return false
			}
			for i := range n {
				sums[i] = blockSum(p[i*BlockSize : (i+1)*BlockSize])
			}
			v.enc.extent(b, n, kindData, func(x uint64) uint64 { return sums[x-b] })
			b += n
		}
		return true
	})
	return err
}

// maybeFlush starts a background flush when the dirty set is large.
func (v *Volume) maybeFlush() {
	v.ci.mu.RLock()
	n, since := v.dirtyBlocks, v.dirtySince
	v.ci.mu.RUnlock()
	big := n >= dirtyMaxBlocks || (n >= dirtyMinBlocks && time.Now().UnixNano()-since > int64(dirtyExpire))
	if big && v.bgFlush.CompareAndSwap(false, true) {
		go func() {
			defer v.bgFlush.Store(false)
			if err := v.Flush(); err != nil {
				v.s.log.Warn("background flush", "volume", v.name, "err", err)
			}
		}()
	}
}
