package snapshot

import (
	"context"
	"fmt"
	"slices"
)

// mergePiece is the most blocks merged under one stripe lock (1 MiB).
const mergePiece = 256

// DeleteSnapshot removes snapshot name online. Its layer is merged into
// the layer above it (the next snapshot's, or the head): every block the
// upper layer does not hold is copied up, one 1 MiB piece at a time while
// I/O continues, and then the layer leaves the chain and its space is
// freed unless a clone still shares it.
//
// Copying up never changes what any chain reads, because the copied
// blocks equal what the upper layer already showed through; so a merge cut
// short by a crash or a cancelled ctx leaves every volume intact, and
// running it again finishes it.
func (v *Volume) DeleteSnapshot(ctx context.Context, name string) error {
	v.opMu.Lock()
	defer v.opMu.Unlock()
	v.mu.RLock()
	err := v.usable()
	pos := -1
	if err == nil {
		pos = v.meta.findSnapshot(name)
	}
	var lower, upper *layer
	var lowerSlot uint32
	if pos >= 0 {
		lower, upper = v.chain[pos], v.chain[pos+1]
		lowerSlot = uint32(slices.Index(v.ci.slots, lower))
	}
	v.mu.RUnlock()
	if err != nil {
		return err
	}
	if pos < 0 {
		return fmt.Errorf("volume %q: snapshot %q: %w", v.name, name, ErrNotFound)
	}
	fail := func(err error) error {
		return fmt.Errorf("volume %q: delete snapshot %q: %w", v.name, name, err)
	}
	if err := v.mergeUp(ctx, lower, lowerSlot, upper, upper == v.head); err != nil {
		return fail(err)
	}

	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.usable(); err != nil {
		return err
	}
	nm := v.meta.clone()
	if upper != v.head {
		nm.Layers[pos+1].LogSize = upper.syncedLogSize()
	}
	nm.Layers = slices.Delete(nm.Layers, pos, pos+1)
	if err := v.writeMeta(nm); err != nil {
		return fail(err)
	}
	v.meta = nm
	v.chain = slices.Delete(v.chain, pos, pos+1)
	v.ci.mu.Lock()
	v.ci.slots[lowerSlot] = nil // nothing in the index points here any more
	v.ci.mu.Unlock()
	v.s.release(lower)
	return nil
}

// mergeUp copies every block of lower that upper does not hold into upper.
func (v *Volume) mergeUp(ctx context.Context, lower *layer, lowerSlot uint32, upper *layer, upperIsHead bool) (err error) {
	lower.mu.RLock()
	runs := lower.m.runs()
	lower.mu.RUnlock()

	buf := make([]byte, mergePiece*BlockSize)
	var sums []uint64
	var gaps, repoint []run
	pending := newLogEncoder() // records for a sealed upper layer
	copying := true            // false once the final sync and append start
	if !upperIsHead {
		// The pieces copied so far are in upper's map already, so a
		// retry skips them: log them even when the merge stops early
		// (they are valid copies, kept past the committed log length on
		// reopen), or fail the volume so that a reopen rebuilds the map
		// from the log. Before, a cancelled merge retried lost them.
		defer func() {
			if err == nil || len(pending.bytes()) == 0 {
				return
			}
			lerr := err // the final sync or append failed: do not append after a torn record
			if copying {
				if lerr = upper.syncData(); lerr == nil {
					lerr = upper.appendLog(pending.bytes())
				}
			}
			if lerr != nil {
				lerr = fmt.Errorf("logging the blocks a stopped merge copied: %w", lerr)
				v.failed.Store(&lerr)
				v.s.log.Error("merge stopped and its copies could not be logged; volume refuses I/O until reopened", "volume", v.name, "err", lerr)
			}
		}()
	}
	for _, r := range runs {
		for a := r.start; a < r.end(); {
			b := min(r.end(), a+mergePiece)
			if err := ctx.Err(); err != nil {
				return err
			}
			err := v.mergePiece(lower, lowerSlot, upper, upperIsHead, a, b, r.val, buf, &sums, &gaps, &repoint, pending)
			if err != nil {
				return err
			}
			a = b
		}
	}
	if upperIsHead {
		v.mu.RLock()
		defer v.mu.RUnlock()
		if err := v.usable(); err != nil {
			return err
		}
		return v.flushLocked()
	}
	copying = false
	if err := upper.syncData(); err != nil {
		return err
	}
	if err := upper.appendLog(pending.bytes()); err != nil {
		return err
	}
	pending.reset() // logged
	return nil
}

func (v *Volume) mergePiece(lower *layer, lowerSlot uint32, upper *layer, upperIsHead bool,
	a, b uint64, kind uint32, buf []byte, sums *[]uint64, gaps, repoint *[]run, pending *logEncoder) error {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if err := v.usable(); err != nil {
		return err
	}
	if upperIsHead {
		defer v.unlockStripes(v.lockStripes(a, b))
	}
	// The blocks of [a, b) that upper does not hold.
	*gaps = (*gaps)[:0]
	upper.mu.RLock()
	pos := a
	upper.m.ascend(a, b, func(r run) bool {
		if r.start > pos {
			*gaps = append(*gaps, run{start: pos, n: r.start - pos})
		}
		pos = r.end()
		return true
	})
	upper.mu.RUnlock()
	if pos < b {
		*gaps = append(*gaps, run{start: pos, n: b - pos})
	}
	if len(*gaps) == 0 {
		return nil
	}
	*sums = (*sums)[:0]
	if kind == kindData {
		for _, g := range *gaps {
			p := buf[:g.n*BlockSize]
			if err := lower.readAt(p, int64(g.start)<<blockShift); err != nil {
				return err
			}
			if err := upper.writeAt(p, int64(g.start)<<blockShift); err != nil {
				return err
			}
			if upperIsHead {
				continue // the head's flush checksums them
			}
			for i := uint64(0); i < g.n; i++ {
				*sums = append(*sums, blockSum(p[i*BlockSize:(i+1)*BlockSize]))
			}
		}
	}
	upperSlot := uint32(slices.Index(v.ci.slots, upper))
	v.ci.mu.Lock()
	defer v.ci.mu.Unlock()
	si := 0
	for _, g := range *gaps {
		upper.mu.Lock()
		upper.m.set(g.start, g.n, kind)
		upper.mu.Unlock()
		// Blocks the index still resolves to lower now resolve to upper.
		*repoint = (*repoint)[:0]
		v.ci.idx.ascend(g.start, g.end(), func(r run) bool {
			if r.val>>2 == lowerSlot {
				*repoint = append(*repoint, r)
			}
			return true
		})
		for _, r := range *repoint {
			v.ci.idx.set(r.start, r.n, slotVal(upperSlot, r.val&3))
		}
		switch {
		case upperIsHead:
			v.markDirty(g.start, g.n, kind)
		case kind == kindData:
			gs := (*sums)[si : si+int(g.n)]
			si += int(g.n)
			pending.extent(g.start, g.n, kindData, func(b uint64) uint64 { return gs[b-g.start] })
		default:
			pending.extent(g.start, g.n, kind, nil)
		}
	}
	return nil
}
