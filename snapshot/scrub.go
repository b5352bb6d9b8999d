package snapshot

import (
	"context"
	"fmt"
)

// BadBlock is a block whose data no longer matches its checksum.
type BadBlock struct {
	// Snapshot names the layer's snapshot; empty for an anonymous layer.
	Snapshot string
	Layer    string
	Offset   int64
}

// ScrubReport summarises a scrub.
type ScrubReport struct {
	Layers int
	Blocks int64
	Bad    []BadBlock
}

// Scrub reads every data block of the volume's sealed layers and checks it
// against the xxhash64 recorded when it was written (one checksum per 4 KiB
// block). It returns an error wrapping ErrCorrupt that counts the bad
// blocks when any is found; the report lists them. I/O continues meanwhile.
func (v *Volume) Scrub(ctx context.Context) (ScrubReport, error) {
	v.mu.RLock()
	if err := v.usable(); err != nil {
		v.mu.RUnlock()
		return ScrubReport{}, err
	}
	type item struct {
		l    *layer
		snap string
	}
	var items []item
	for i, l := range v.chain[:len(v.chain)-1] {
		items = append(items, item{l, v.meta.Layers[i].Snapshot})
	}
	// Hold the layers while scrubbing without holding the volume.
	v.s.mu.Lock()
	for _, it := range items {
		it.l.refs++
	}
	v.s.mu.Unlock()
	v.mu.RUnlock()
	defer func() {
		for _, it := range items {
			v.s.release(it.l)
		}
	}()

	var rep ScrubReport
	buf := make([]byte, 256*BlockSize)
	for _, it := range items {
		rep.Layers++
		// The map and checksums as the log has them: a merge into this
		// layer may be copying blocks up meanwhile, and they count once
		// their records are synced. logMu keeps its appends out of the
		// replay.
		kinds := newExtMap()
		it.l.logMu.Lock()
		sums, err := it.l.sums(kinds)
		it.l.logMu.Unlock()
		if err != nil {
			return rep, fmt.Errorf("volume %q: scrub: %w", v.name, err)
		}
		for _, r := range kinds.runs() {
			if r.val != kindData {
				continue
			}
			for b := r.start; b < r.end(); {
				if err := ctx.Err(); err != nil {
					return rep, err
				}
				n := min(r.end()-b, 256)
				p := buf[:n*BlockSize]
				if err := it.l.readAt(p, int64(b)<<blockShift); err != nil {
					return rep, fmt.Errorf("volume %q: scrub: %w", v.name, err)
				}
				for i := uint64(0); i < n; i++ {
					rep.Blocks++
					want, ok := sums[b+i]
					if !ok || blockSum(p[i*BlockSize:(i+1)*BlockSize]) != want {
						rep.Bad = append(rep.Bad, BadBlock{Snapshot: it.snap, Layer: it.l.id.String(), Offset: int64(b+i) << blockShift})
					}
				}
				b += n
			}
		}
	}
	if len(rep.Bad) > 0 {
		first := rep.Bad[0]
		return rep, fmt.Errorf("volume %q: scrub: %d bad blocks, first at offset %d in layer %s (snapshot %q): %w",
			v.name, len(rep.Bad), first.Offset, first.Layer, first.Snapshot, ErrCorrupt)
	}
	return rep, nil
}
