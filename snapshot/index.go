package snapshot

import (
	"fmt"
	"sync"
)

// ExtentKind says what a range of a volume holds.
type ExtentKind uint8

const (
	// ExtentUnknown is the zero value.
	ExtentUnknown ExtentKind = iota
	// ExtentData is written data (which may happen to be zeros).
	ExtentData
	// ExtentZero reads as zeros and was written as zeros (WRITE_ZEROES).
	ExtentZero
	// ExtentHole reads as zeros: never written, or trimmed.
	ExtentHole
)

func (k ExtentKind) String() string {
	switch k {
	case ExtentData:
		return "data"
	case ExtentZero:
		return "zero"
	case ExtentHole:
		return "hole"
	default:
		return "unknown"
	}
}

// ParseExtentKind is the inverse of ExtentKind.String.
func ParseExtentKind(s string) (ExtentKind, error) {
	for k := ExtentData; k <= ExtentHole; k++ {
		if k.String() == s {
			return k, nil
		}
	}
	return ExtentUnknown, fmt.Errorf("extent kind %q: %w", s, ErrInvalidArgument)
}

// Extent is a byte range of a volume with one kind.
type Extent struct {
	Offset int64
	Length int64
	Kind   ExtentKind
}

func kindExtent(k uint32) ExtentKind {
	switch k {
	case kindData:
		return ExtentData
	case kindZero:
		return ExtentZero
	default:
		return ExtentHole
	}
}

// slot values in a chain index: slot<<2 | kind.
func slotVal(slot uint32, kind uint32) uint32 { return slot<<2 | kind }

// chainIndex is the flattened index of a chain: for every block, the
// topmost layer that holds it and how. Reads cost one B-tree lookup per
// run whatever the chain depth.
type chainIndex struct {
	mu    sync.RWMutex // guards idx; slots changes only under the owner's exclusive lock
	idx   *extMap
	slots []*layer
}

// build (re)computes the index of layers, bottom first.
func (c *chainIndex) build(layers []*layer) {
	c.idx = newExtMap()
	c.slots = append(c.slots[:0:0], layers...)
	for i, l := range layers {
		l.mu.RLock()
		l.m.each(func(r run) bool {
			c.idx.set(r.start, r.n, slotVal(uint32(i), r.val))
			return true
		})
		l.mu.RUnlock()
	}
}

type segment struct {
	l      *layer
	off    int64
	bufOff int64
	n      int64
}

// read fills p from the chain at byte offset off; the caller has checked
// the range and holds what keeps slots' layers open.
func (c *chainIndex) read(p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	end := off + int64(len(p))
	var arr [8]segment
	segs := arr[:0]
	pos := off
	c.mu.RLock()
	c.idx.ascend(uint64(off)>>blockShift, (uint64(end)+BlockSize-1)>>blockShift, func(r run) bool {
		rs := max(int64(r.start)<<blockShift, off)
		re := min(int64(r.end())<<blockShift, end)
		clear(p[pos-off : rs-off])
		if r.val&3 == kindData {
			segs = append(segs, segment{l: c.slots[r.val>>2], off: rs, bufOff: rs - off, n: re - rs})
		} else {
			clear(p[rs-off : re-off])
		}
		pos = re
		return true
	})
	c.mu.RUnlock()
	clear(p[pos-off:])
	for _, s := range segs {
		if err := s.l.readAt(p[s.bufOff:s.bufOff+s.n], s.off); err != nil {
			return err
		}
	}
	return nil
}

// extents describes [off, off+length), merging neighbours of one kind.
func (c *chainIndex) extents(off, length int64) []Extent {
	var out []Extent
	add := func(o, n int64, k ExtentKind) {
		if n <= 0 {
			return
		}
		if len(out) > 0 {
			last := &out[len(out)-1]
			if last.Kind == k && last.Offset+last.Length == o {
				last.Length += n
				return
			}
		}
		out = append(out, Extent{Offset: o, Length: n, Kind: k})
	}
	end := off + length
	pos := off
	c.mu.RLock()
	c.idx.ascend(uint64(off)>>blockShift, (uint64(end)+BlockSize-1)>>blockShift, func(r run) bool {
		rs := max(int64(r.start)<<blockShift, off)
		re := min(int64(r.end())<<blockShift, end)
		add(pos, rs-pos, ExtentHole)
		add(rs, re-rs, kindExtent(r.val&3))
		pos = re
		return true
	})
	c.mu.RUnlock()
	add(pos, end-pos, ExtentHole)
	return out
}

// clampRange validates a read-style range against size, returning the
// length that lies inside the volume.
func clampRange(off int64, n int, size int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("offset %d: %w", off, ErrInvalidArgument)
	}
	if off >= size {
		return 0, nil
	}
	return int(min(int64(n), size-off)), nil
}
