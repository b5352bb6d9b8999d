package backupd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/plugins"
	"github.com/strata-block/strata/plugins/fs"
)

// memSource is an in-memory Source: data plus the ranges reported as holes.
type memSource struct {
	data  []byte
	holes []Extent // sorted, aligned; read as zeros
}

func (s *memSource) Size() int64 { return int64(len(s.data)) }

func (s *memSource) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if off >= int64(len(s.data)) {
		return 0, io.EOF
	}
	n := copy(p, s.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (s *memSource) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	end := min(off+length, int64(len(s.data)))
	var out []Extent
	pos := off
	for _, h := range s.holes {
		hs, he := max(h.Offset, pos), min(h.Offset+h.Length, end)
		if he <= hs {
			continue
		}
		if hs > pos {
			out = append(out, Extent{Offset: pos, Length: hs - pos, Kind: blockdev.ExtentData})
		}
		out = append(out, Extent{Offset: hs, Length: he - hs, Kind: blockdev.ExtentHole})
		pos = he
	}
	if pos < end {
		out = append(out, Extent{Offset: pos, Length: end - pos, Kind: blockdev.ExtentData})
	}
	return out, nil
}

// memDest is an in-memory Destination.
type memDest struct {
	mu   sync.Mutex
	data []byte
}

func (d *memDest) Size() int64 { return int64(len(d.data)) }

func (d *memDest) WriteAt(_ context.Context, p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off+int64(len(p)) > int64(len(d.data)) {
		return 0, fmt.Errorf("write %d+%d past %d", off, len(p), len(d.data))
	}
	return copy(d.data[off:], p), nil
}

func (d *memDest) Flush(context.Context) error { return nil }

func (d *memDest) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off+int64(len(p)) > int64(len(d.data)) {
		return 0, fmt.Errorf("read %d+%d past %d", off, len(p), len(d.data))
	}
	return copy(p, d.data[off:]), nil
}

// CountingTarget counts the bytes Put through it (exported for the
// external tests).
type CountingTarget struct {
	plugins.Target
	mu  sync.Mutex
	put int64
}

func (c *CountingTarget) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	c.mu.Lock()
	c.put += size
	c.mu.Unlock()
	return c.Target.Put(ctx, key, r, size)
}

func (c *CountingTarget) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	c.mu.Lock()
	c.put += size
	c.mu.Unlock()
	return c.Target.PutIfAbsent(ctx, key, r, size)
}

// Take returns the bytes Put since the last Take.
func (c *CountingTarget) Take() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.put
	c.put = 0
	return n
}

// NewFSTarget opens a plugins/fs target on dir, closed at cleanup.
func NewFSTarget(t testing.TB, dir string) *CountingTarget {
	t.Helper()
	tg, err := fs.New(dir)
	if err != nil {
		t.Fatalf("fs.New(%s): %v", dir, err)
	}
	t.Cleanup(func() { _ = tg.Close() })
	return &CountingTarget{Target: tg}
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func testKey(t testing.TB) *Key {
	t.Helper()
	k, err := NewKey(bytes.Repeat([]byte{7}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// RandomData fills n bytes with incompressible data.
func RandomData(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// restoreAll restores key into a fresh buffer of size and returns it.
func restoreAll(t testing.TB, r *Repository, key string, size int64, opts RestoreOptions) ([]byte, *RestoreResult, error) {
	t.Helper()
	d := &memDest{data: make([]byte, size)}
	res, err := r.Restore(context.Background(), key, d, opts)
	return d.data, res, err
}

// MustEqual fails t if got differs from want, naming the first byte.
func MustEqual(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: differs at byte %d (len %d vs %d)", what, i, len(got), len(want))
	}
}

// SortedKeys lists the keys under prefix on tg, in order (exported for the
// external tests).
func SortedKeys(t testing.TB, tg plugins.Target, prefix string) []string {
	t.Helper()
	var out []string
	for o, err := range tg.List(context.Background(), prefix, "") {
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, o.Key)
	}
	slices.Sort(out)
	return out
}

// faultTarget injects the failures of a target that does not answer, or
// answers wrongly: a Get or a Delete of a key for which its hook returns
// an error fails with it (a transient error, a plugin that died, a
// spurious 404 from a gateway).
type faultTarget struct {
	plugins.Target
	mu     sync.Mutex
	get    func(key string) error
	delete func(key string) error
}

// failGet makes Gets fail with fn's error (nil: no fault).
func (f *faultTarget) failGet(fn func(key string) error) {
	f.mu.Lock()
	f.get = fn
	f.mu.Unlock()
}

// failDelete makes Deletes fail with fn's error (nil: no fault).
func (f *faultTarget) failDelete(fn func(key string) error) {
	f.mu.Lock()
	f.delete = fn
	f.mu.Unlock()
}

func (f *faultTarget) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, int64, error) {
	f.mu.Lock()
	fn := f.get
	f.mu.Unlock()
	if fn != nil {
		if err := fn(key); err != nil {
			return nil, 0, fmt.Errorf("injected: get %s: %w", key, err)
		}
	}
	return f.Target.Get(ctx, key, off, n)
}

func (f *faultTarget) Delete(ctx context.Context, keys []string) error {
	f.mu.Lock()
	fn := f.delete
	f.mu.Unlock()
	for _, k := range keys {
		if fn != nil {
			if err := fn(k); err != nil {
				return fmt.Errorf("injected: delete %s: %w", k, err)
			}
		}
	}
	return f.Target.Delete(ctx, keys)
}

// keyIs returns a fault hook failing key with err.
func keyIs(key string, err error) func(string) error {
	return func(k string) error {
		if k == key {
			return err
		}
		return nil
	}
}

// keyPrefix returns a fault hook failing every key under prefix with err.
func keyPrefix(prefix string, err error) func(string) error {
	return func(k string) error {
		if strings.HasPrefix(k, prefix) {
			return err
		}
		return nil
	}
}

// hourlyBackups takes n backups of the same small random volume "vol-a",
// an hour apart from 2026-03-01, and returns their manifest keys, oldest
// first.
func hourlyBackups(t *testing.T, r *Repository, n int, seed uint64) []string {
	t.Helper()
	data := RandomData(rand.New(rand.NewPCG(seed, seed+1)), 64<<10)
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	var keys []string
	for i := range n {
		at := base.Add(time.Duration(i) * time.Hour)
		res, err := r.Backup(t.Context(), BackupOptions{Volume: "vol-a", Snapshot: "s", Source: &memSource{data: data}, Now: func() time.Time { return at }})
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, res.ManifestKey)
	}
	return keys
}
