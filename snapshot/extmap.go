package snapshot

import "github.com/google/btree"

// run maps the blocks [start, start+n) to one value.
type run struct {
	start uint64
	n     uint64
	val   uint32
}

func (r run) end() uint64 { return r.start + r.n }

// extMap is an ordered map from block numbers to small values, stored as
// non-overlapping runs in a B-tree. Adjacent runs with equal values are
// merged, so a contiguous write or a huge trim costs one run. Memory is about
// 24 bytes per run plus B-tree overhead (see FORMAT.md, "Memory budget").
//
// extMap is not safe for concurrent use; callers hold the lock that guards it.
type extMap struct {
	t       *btree.BTreeG[run]
	scratch []run
}

func runLess(a, b run) bool { return a.start < b.start }

func newExtMap() *extMap {
	return &extMap{t: btree.NewG(32, runLess)}
}

// len returns the number of runs.
func (m *extMap) len() int { return m.t.Len() }

// find returns the run containing block b.
func (m *extMap) find(b uint64) (run, bool) {
	var r run
	found := false
	m.t.DescendLessOrEqual(run{start: b}, func(x run) bool {
		if x.end() > b {
			r, found = x, true
		}
		return false
	})
	return r, found
}

// ascend calls fn with every run intersecting [start, end), clipped to that
// range, in order, until fn returns false.
func (m *extMap) ascend(start, end uint64, fn func(run) bool) {
	if start >= end {
		return
	}
	if r, ok := m.find(start); ok {
		if !fn(clip(r, start, end)) {
			return
		}
	}
	m.t.AscendRange(run{start: start + 1}, run{start: end}, func(x run) bool {
		return fn(clip(x, start, end))
	})
}

func clip(r run, start, end uint64) run {
	if r.start < start {
		r.n -= start - r.start
		r.start = start
	}
	if r.end() > end {
		r.n = end - r.start
	}
	return r
}

// covers reports whether every block of [start, end) is mapped to val.
func (m *extMap) covers(start, end uint64, val uint32) bool {
	r, ok := m.find(start)
	return ok && r.val == val && r.end() >= end
}

// clear unmaps [start, start+n).
func (m *extMap) clear(start, n uint64) {
	if n == 0 {
		return
	}
	end := start + n
	if r, ok := m.find(start); ok {
		if r.start < start {
			m.t.Delete(r)
			m.t.ReplaceOrInsert(run{start: r.start, n: start - r.start, val: r.val})
			if r.end() > end {
				m.t.ReplaceOrInsert(run{start: end, n: r.end() - end, val: r.val})
				return
			}
		}
	}
	m.scratch = m.scratch[:0]
	m.t.AscendRange(run{start: start}, run{start: end}, func(x run) bool {
		m.scratch = append(m.scratch, x)
		return true
	})
	for _, x := range m.scratch {
		m.t.Delete(x)
		if x.end() > end {
			m.t.ReplaceOrInsert(run{start: end, n: x.end() - end, val: x.val})
		}
	}
}

// set maps [start, start+n) to val, replacing what was there.
func (m *extMap) set(start, n uint64, val uint32) {
	if n == 0 {
		return
	}
	m.clear(start, n)
	nr := run{start: start, n: n, val: val}
	if start > 0 {
		if l, ok := m.find(start - 1); ok && l.val == val {
			m.t.Delete(l)
			nr.start, nr.n = l.start, l.n+nr.n
		}
	}
	if r, ok := m.find(nr.end()); ok && r.val == val && r.start == nr.end() {
		m.t.Delete(r)
		nr.n += r.n
	}
	m.t.ReplaceOrInsert(nr)
}

// each calls fn for every run in order until fn returns false.
func (m *extMap) each(fn func(run) bool) {
	m.t.Ascend(btree.ItemIteratorG[run](fn))
}

// runs returns a copy of every run.
func (m *extMap) runs() []run {
	out := make([]run, 0, m.t.Len())
	m.each(func(r run) bool { out = append(out, r); return true })
	return out
}
