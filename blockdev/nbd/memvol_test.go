package nbd

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/strata-block/strata/blockdev"
)

const memBlock = 4096

// memVolume is an in-memory blockdev.Volume for protocol tests: it keeps
// the current content, the durable content (as of the last Flush or FUA),
// an extent kind per 4 KiB block, and an optional error injector.
type memVolume struct {
	name string
	ro   bool

	mu      sync.Mutex
	data    []byte
	durable []byte
	kinds   []blockdev.ExtentKind
	// fail, when set, is asked before each operation; a non-nil error is
	// returned instead of doing it.
	fail func(op string, off, n int64) error
}

func newMemVolume(name string, size int64) *memVolume {
	kinds := make([]blockdev.ExtentKind, size/memBlock)
	for i := range kinds {
		kinds[i] = blockdev.ExtentHole
	}
	return &memVolume{name: name, data: make([]byte, size), durable: make([]byte, size), kinds: kinds}
}

func (m *memVolume) Name() string   { return m.name }
func (m *memVolume) Size() int64    { return int64(len(m.data)) }
func (m *memVolume) ReadOnly() bool { return m.ro }

// setFail sets the error injector (nil: none). The device reads it under
// m.mu, so a test changes it through here.
func (m *memVolume) setFail(f func(op string, off, n int64) error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fail = f
}

func (m *memVolume) inject(op string, off, n int64) error {
	if m.fail != nil {
		return m.fail(op, off, n)
	}
	return nil
}

func (m *memVolume) check(op string, off, n int64) error {
	if m.ro && op != "read" && op != "extents" && op != "flush" {
		return fmt.Errorf("%s: %s: %w", m.name, op, blockdev.ErrReadOnly)
	}
	if off < 0 || n < 0 || off+n > int64(len(m.data)) {
		return fmt.Errorf("%s: %s [%d,+%d): %w", m.name, op, off, n, blockdev.ErrOutOfRange)
	}
	return m.inject(op, off, n)
}

func (m *memVolume) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.inject("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	if off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// setKinds marks the blocks [off, off+n) touches: whole blocks get kind,
// partly covered ones become data.
func (m *memVolume) setKinds(off, n int64, kind blockdev.ExtentKind) {
	for b := off / memBlock; b*memBlock < off+n; b++ {
		if b*memBlock >= off && (b+1)*memBlock <= off+n {
			m.kinds[b] = kind
		} else {
			m.kinds[b] = blockdev.ExtentData
		}
	}
}

func (m *memVolume) fua(flags blockdev.WriteFlags) {
	if flags&blockdev.FUA != 0 {
		copy(m.durable, m.data)
	}
}

func (m *memVolume) WriteAt(_ context.Context, p []byte, off int64, flags blockdev.WriteFlags) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	copy(m.data[off:], p)
	m.setKinds(off, int64(len(p)), blockdev.ExtentData)
	m.fua(flags)
	return len(p), nil
}

func (m *memVolume) Flush(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.inject("flush", 0, 0); err != nil {
		return err
	}
	copy(m.durable, m.data)
	return nil
}

func (m *memVolume) zero(op string, off, n int64, kind blockdev.ExtentKind, flags blockdev.WriteFlags) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(op, off, n); err != nil {
		return err
	}
	clear(m.data[off : off+n])
	m.setKinds(off, n, kind)
	m.fua(flags)
	return nil
}

func (m *memVolume) Zero(_ context.Context, off, n int64, flags blockdev.WriteFlags) error {
	return m.zero("zero", off, n, blockdev.ExtentZero, flags)
}

func (m *memVolume) Trim(_ context.Context, off, n int64, flags blockdev.WriteFlags) error {
	return m.zero("trim", off, n, blockdev.ExtentHole, flags)
}

func (m *memVolume) Extents(_ context.Context, off, n int64) ([]blockdev.Extent, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.inject("extents", off, n); err != nil {
		return nil, err
	}
	end := min(off+n, int64(len(m.data)))
	var out []blockdev.Extent
	for pos := off; pos < end; {
		k := m.kinds[pos/memBlock]
		next := min((pos/memBlock+1)*memBlock, end)
		if l := len(out); l > 0 && out[l-1].Kind == k {
			out[l-1].Length += next - pos
		} else {
			out = append(out, blockdev.Extent{Offset: pos, Length: next - pos, Kind: k})
		}
		pos = next
	}
	return out, nil
}

// durableAt returns a copy of the durable content of [off, off+n).
func (m *memVolume) durableAt(off, n int64) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.durable[off:off+n]...)
}
