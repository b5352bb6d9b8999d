package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
)

// refVolume is the in-memory reference of one volume.
type refVolume struct {
	data  []byte
	snaps map[string][]byte
	order []string // snapshot names, oldest first
}

// modelRun drives a real Store and the reference with the same random
// operations and compares every read byte for byte.
type modelRun struct {
	t     *testing.T
	ctx   context.Context
	rng   *rand.Rand
	dir   string
	store *Store
	vols  map[string]*Volume
	ref   map[string]*refVolume
	nextN int
	step  int
	op    string
}

func envInt(name string, def uint64) uint64 {
	if s := os.Getenv(name); s != "" {
		if n, err := strconv.ParseUint(s, 10, 64); err == nil {
			return n
		}
	}
	return def
}

// TestModel runs random operations against the store and an in-memory
// reference. Reproduce a failure with STRATA_MODEL_SEED=<seed>.
func TestModel(t *testing.T) {
	t.Parallel()
	seed := envInt("STRATA_MODEL_SEED", rand.Uint64())
	ops := int(envInt("STRATA_MODEL_OPS", 20000))
	t.Logf("seed %d (STRATA_MODEL_SEED=%d to reproduce), %d operations", seed, seed, ops)
	m := &modelRun{
		t:    t,
		ctx:  t.Context(),
		rng:  rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		dir:  t.TempDir(),
		vols: make(map[string]*Volume),
		ref:  make(map[string]*refVolume),
	}
	m.openStore()
	m.createVolume("vol-0", 64*BlockSize)
	counts := map[string]int{}
	for m.step = 0; m.step < ops; m.step++ {
		m.randomOp()
		counts[m.op]++
	}
	for name := range m.vols {
		m.verifyAll(name)
	}
	t.Logf("operations by kind: %v", counts)
	if err := m.store.Close(); err != nil {
		t.Fatal(err)
	}
}

func (m *modelRun) fatalf(format string, args ...any) {
	m.t.Helper()
	m.t.Fatalf("step %d (%s): %s", m.step, m.op, fmt.Sprintf(format, args...))
}

func (m *modelRun) check(err error) {
	m.t.Helper()
	if err != nil {
		m.fatalf("%v", err)
	}
}

func (m *modelRun) openStore() {
	s, err := OpenStore(m.dir, nil)
	m.check(err)
	m.store = s
	for name := range m.ref {
		v, err := s.Open(m.ctx, name)
		m.check(err)
		m.vols[name] = v
	}
}

func (m *modelRun) createVolume(name string, size int64) {
	v, err := m.store.Create(m.ctx, name, size)
	m.check(err)
	m.vols[name] = v
	m.ref[name] = &refVolume{data: make([]byte, size), snaps: map[string][]byte{}}
}

func (m *modelRun) pickVolume() (string, *Volume, *refVolume) {
	names := make([]string, 0, len(m.vols))
	for n := range m.vols {
		names = append(names, n)
	}
	slices.Sort(names)
	n := names[m.rng.IntN(len(names))]
	return n, m.vols[n], m.ref[n]
}

// randRange returns a range of up to maxLen bytes inside size, often
// unaligned.
func (m *modelRun) randRange(size int64, maxLen int64) (off, n int64) {
	if m.rng.IntN(2) == 0 {
		// Block-aligned.
		blocks := size / BlockSize
		b := m.rng.Int64N(blocks)
		nb := 1 + m.rng.Int64N(min(blocks-b, maxLen/BlockSize))
		return b * BlockSize, nb * BlockSize
	}
	off = m.rng.Int64N(size)
	n = 1 + m.rng.Int64N(min(size-off, maxLen))
	return off, n
}

func (m *modelRun) randomOp() {
	name, v, r := m.pickVolume()
	size := int64(len(r.data))
	x := m.rng.IntN(100)
	switch {
	case x < 30:
		m.op = "write"
		off, n := m.randRange(size, 5*BlockSize)
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(m.rng.IntN(255) + 1)
		}
		_, err := v.WriteAt(p, off)
		m.check(err)
		copy(r.data[off:], p)
	case x < 48:
		m.op = "read"
		off, n := m.randRange(size, 8*BlockSize)
		got := make([]byte, n)
		_, err := v.ReadAt(got, off)
		m.check(err)
		if !bytes.Equal(got, r.data[off:off+n]) {
			m.fatalf("volume %s: read [%d,+%d) differs from the reference at byte %d", name, off, n, firstDiff(got, r.data[off:off+n]))
		}
	case x < 53:
		m.op = "zero"
		off, n := m.randRange(size, 12*BlockSize)
		m.check(v.Zero(off, n))
		clear(r.data[off : off+n])
	case x < 58:
		m.op = "trim"
		off, n := m.randRange(size, 12*BlockSize)
		m.check(v.Trim(off, n))
		clear(r.data[off : off+n])
	case x < 61:
		m.op = "flush"
		m.check(v.Flush())
	case x < 66:
		m.op = "snapshot"
		if len(r.order) >= 12 {
			return
		}
		m.nextN++
		sn := fmt.Sprintf("s%d", m.nextN)
		m.check(v.Snapshot(m.ctx, sn))
		r.snaps[sn] = slices.Clone(r.data)
		r.order = append(r.order, sn)
	case x < 71:
		m.op = "delete-snapshot"
		if len(r.order) == 0 {
			return
		}
		i := m.rng.IntN(len(r.order))
		m.check(v.DeleteSnapshot(m.ctx, r.order[i]))
		delete(r.snaps, r.order[i])
		r.order = slices.Delete(r.order, i, i+1)
	case x < 73:
		m.op = "revert"
		if len(r.order) == 0 {
			return
		}
		i := m.rng.IntN(len(r.order))
		m.check(v.Revert(m.ctx, r.order[i]))
		r.data = slices.Clone(r.snaps[r.order[i]])
		for _, sn := range r.order[i+1:] {
			delete(r.snaps, sn)
		}
		r.order = r.order[:i+1]
	case x < 75:
		m.op = "clone"
		if len(r.order) == 0 || len(m.vols) >= 4 {
			return
		}
		sn := r.order[m.rng.IntN(len(r.order))]
		m.nextN++
		dst := fmt.Sprintf("vol-%d", m.nextN)
		nv, err := m.store.Clone(m.ctx, name, sn, dst)
		m.check(err)
		m.vols[dst] = nv
		m.ref[dst] = &refVolume{data: slices.Clone(r.snaps[sn]), snaps: map[string][]byte{}}
	case x < 76:
		m.op = "delete-volume"
		if len(m.vols) < 2 {
			return
		}
		m.check(v.Close())
		m.check(m.store.Delete(m.ctx, name))
		delete(m.vols, name)
		delete(m.ref, name)
	case x < 77:
		m.op = "reopen"
		m.check(m.store.Close())
		clear(m.vols)
		m.openStore()
	case x < 78:
		m.op = "reopen-volume"
		m.check(v.Close())
		nv, err := m.store.Open(m.ctx, name)
		m.check(err)
		m.vols[name] = nv
	case x < 80:
		m.op = "grow"
		if size >= 256*BlockSize {
			return
		}
		ns := size + BlockSize*(1+m.rng.Int64N(16))
		m.check(v.Grow(m.ctx, ns))
		r.data = append(r.data, make([]byte, ns-size)...)
	case x < 85:
		m.op = "read-snapshot"
		if len(r.order) == 0 {
			return
		}
		sn := r.order[m.rng.IntN(len(r.order))]
		m.verifySnapshot(name, v, sn, r.snaps[sn])
	case x < 89:
		m.op = "extents"
		m.verifyExtents(name, v, r.data)
	case x < 93:
		m.op = "changed"
		m.verifyChanged(name, v, r)
	case x < 94:
		m.op = "scrub"
		_, err := v.Scrub(m.ctx)
		m.check(err)
	default:
		m.op = "verify"
		m.verifyAll(name)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func (m *modelRun) verifyAll(name string) {
	v, r := m.vols[name], m.ref[name]
	if v.Size() != int64(len(r.data)) {
		m.fatalf("volume %s: size %d, reference %d", name, v.Size(), len(r.data))
	}
	got := make([]byte, len(r.data)+100)
	n, err := v.ReadAt(got, 0)
	if n != len(r.data) || !errors.Is(err, io.EOF) {
		m.fatalf("volume %s: full read returned %d, %v; want %d, EOF", name, n, err, len(r.data))
	}
	if !bytes.Equal(got[:n], r.data) {
		m.fatalf("volume %s: content differs from the reference at byte %d", name, firstDiff(got, r.data))
	}
	infos := v.Snapshots()
	if len(infos) != len(r.order) {
		m.fatalf("volume %s: %d snapshots, reference %d", name, len(infos), len(r.order))
	}
	for i, si := range infos {
		if si.Name != r.order[i] || si.Size != int64(len(r.snaps[si.Name])) {
			m.fatalf("volume %s: snapshot %d is %s (size %d), reference %s (size %d)", name, i, si.Name, si.Size, r.order[i], len(r.snaps[r.order[i]]))
		}
		m.verifySnapshot(name, v, si.Name, r.snaps[si.Name])
	}
}

func (m *modelRun) verifySnapshot(name string, v *Volume, sn string, want []byte) {
	vw, err := v.OpenSnapshot(m.ctx, sn)
	m.check(err)
	defer vw.Close()
	got := make([]byte, len(want))
	_, err = vw.ReadAt(got, 0)
	m.check(err)
	if !bytes.Equal(got, want) {
		m.fatalf("volume %s: snapshot %s differs from the reference at byte %d", name, sn, firstDiff(got, want))
	}
	m.checkExtents(fmt.Sprintf("%s@%s", name, sn), vw.Extents, want)
}

func (m *modelRun) verifyExtents(name string, v *Volume, want []byte) {
	m.checkExtents(name, v.Extents, want)
}

// checkExtents checks that extents tile the volume and that zero and hole
// extents read as zeros in the reference.
func (m *modelRun) checkExtents(what string, fn func(context.Context, int64, int64) ([]Extent, error), want []byte) {
	off := m.rng.Int64N(int64(len(want)))
	exts, err := fn(m.ctx, off, int64(len(want))) // past the end: clipped
	m.check(err)
	pos := off
	for _, e := range exts {
		if e.Offset != pos || e.Length <= 0 {
			m.fatalf("%s: extents from %d do not tile: %+v", what, off, exts)
		}
		if e.Kind != ExtentData {
			for i := e.Offset; i < e.Offset+e.Length; i++ {
				if want[i] != 0 {
					m.fatalf("%s: extent %+v reported %s but byte %d is %d", what, e, e.Kind, i, want[i])
				}
			}
		}
		pos += e.Length
	}
	if pos != int64(len(want)) {
		m.fatalf("%s: extents from %d end at %d, size %d", what, off, pos, len(want))
	}
}

// verifyChanged checks that Changed reports every block that differs
// between two states (it may over-report).
func (m *modelRun) verifyChanged(name string, v *Volume, r *refVolume) {
	if len(r.order) == 0 {
		return
	}
	i := m.rng.IntN(len(r.order))
	from := r.order[i]
	to, toData := "", r.data
	if j := i + 1 + m.rng.IntN(len(r.order)-i); j < len(r.order) {
		to, toData = r.order[j], r.snaps[r.order[j]]
	}
	fromData := r.snaps[from]
	exts, err := v.Changed(m.ctx, from, to)
	m.check(err)
	changed := make([]bool, len(toData)/BlockSize)
	for _, e := range exts {
		if e.Offset%BlockSize != 0 || e.Length%BlockSize != 0 || e.Offset+e.Length > int64(len(toData)) {
			m.fatalf("volume %s: changed %s..%q: bad extent %+v (size %d)", name, from, to, e, len(toData))
		}
		for b := e.Offset / BlockSize; b < (e.Offset+e.Length)/BlockSize; b++ {
			changed[b] = true
		}
	}
	for b := range changed {
		lo, hi := b*BlockSize, (b+1)*BlockSize
		var old []byte
		if hi <= len(fromData) {
			old = fromData[lo:hi]
		} else {
			old = make([]byte, BlockSize)
		}
		if !changed[b] && !bytes.Equal(old, toData[lo:hi]) {
			m.fatalf("volume %s: block %d differs between %s and %q but Changed did not report it", name, b, from, to)
		}
	}
}
