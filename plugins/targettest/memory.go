package targettest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"iter"
	"slices"
	"strings"
	"sync"

	"github.com/strata-block/strata/plugins"
)

// Memory is an in-memory Target: the reference implementation the suite
// checks itself against, and the target behind the plugins package's shim
// and retry tests. The zero value is not usable; call NewMemory.
type Memory struct {
	mu      sync.Mutex
	objects map[string][]byte
	closed  bool
}

var _ plugins.Target = (*Memory)(nil)

// NewMemory returns an empty in-memory target.
func NewMemory() *Memory { return &Memory{objects: make(map[string][]byte)} }

// OpenMemory is a plugins.OpenFunc for "mem:" URLs, so a test plugin
// process can serve a Memory target.
func OpenMemory(_ context.Context, url string, _ plugins.Credentials) (plugins.Target, error) {
	if !strings.HasPrefix(url, "mem:") || strings.Contains(url, "?") {
		return nil, fmt.Errorf("memory target: URL %q is not mem:<anything but a query>: %w", url, plugins.ErrPermanent)
	}
	return NewMemory(), nil
}

func (m *Memory) check() error {
	if m.closed {
		return plugins.ErrClosed
	}
	return nil
}

func (m *Memory) Info(context.Context) (plugins.Info, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(); err != nil {
		return plugins.Info{}, err
	}
	return plugins.Info{Kind: "memory", ConditionalCreate: plugins.ConditionalCreateAtomic, MaxObjectSize: 1 << 32, MaxBatch: plugins.MaxBatch}, nil
}

func (m *Memory) read(ctx context.Context, key string, r io.Reader, size int64) ([]byte, error) {
	if err := plugins.ValidateKey(key); err != nil {
		return nil, err
	}
	if size < 0 {
		return nil, fmt.Errorf("put %q: negative size: %w", key, plugins.ErrPermanent)
	}
	var b bytes.Buffer
	b.Grow(int(min(size, 64<<20)))
	if _, err := io.Copy(&b, plugins.SizedReader(r, size)); err != nil {
		return nil, fmt.Errorf("put %q: %w", key, err)
	}
	return b.Bytes(), ctx.Err()
}

func (m *Memory) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	data, err := m.read(ctx, key, r, size)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(); err != nil {
		return err
	}
	m.objects[key] = data
	return nil
}

func (m *Memory) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	data, err := m.read(ctx, key, r, size)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(); err != nil {
		return err
	}
	if _, ok := m.objects[key]; ok {
		return fmt.Errorf("put-if-absent %q: %w", key, plugins.ErrAlreadyExists)
	}
	m.objects[key] = data
	return nil
}

func (m *Memory) Get(_ context.Context, key string, offset, length int64) (io.ReadCloser, int64, error) {
	if err := plugins.ValidateKey(key); err != nil {
		return nil, 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(); err != nil {
		return nil, 0, err
	}
	data, ok := m.objects[key]
	if !ok {
		return nil, 0, fmt.Errorf("get %q: %w", key, plugins.ErrNotFound)
	}
	if offset < 0 || offset > int64(len(data)) {
		return nil, 0, fmt.Errorf("get %q: offset %d of a %d-byte object: %w", key, offset, len(data), plugins.ErrInvalidRange)
	}
	end := int64(len(data))
	if length >= 0 {
		end = min(end, offset+length)
	}
	return io.NopCloser(bytes.NewReader(data[offset:end])), end - offset, nil
}

func (m *Memory) Has(_ context.Context, keys []string) ([]bool, error) {
	for _, k := range keys {
		if err := plugins.ValidateKey(k); err != nil {
			return nil, err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(); err != nil {
		return nil, err
	}
	out := make([]bool, len(keys))
	for i, k := range keys {
		_, out[i] = m.objects[k]
	}
	return out, nil
}

func (m *Memory) List(_ context.Context, prefix, startAfter string) iter.Seq2[plugins.ObjectInfo, error] {
	return func(yield func(plugins.ObjectInfo, error) bool) {
		if err := plugins.ValidatePrefix(prefix); err != nil {
			yield(plugins.ObjectInfo{}, err)
			return
		}
		m.mu.Lock()
		if err := m.check(); err != nil {
			m.mu.Unlock()
			yield(plugins.ObjectInfo{}, err)
			return
		}
		var objs []plugins.ObjectInfo
		for k, v := range m.objects {
			if strings.HasPrefix(k, prefix) && k > startAfter {
				objs = append(objs, plugins.ObjectInfo{Key: k, Size: int64(len(v))})
			}
		}
		m.mu.Unlock()
		slices.SortFunc(objs, func(a, b plugins.ObjectInfo) int { return strings.Compare(a.Key, b.Key) })
		for _, o := range objs {
			if !yield(o, nil) {
				return
			}
		}
	}
}

func (m *Memory) Delete(_ context.Context, keys []string) error {
	for _, k := range keys {
		if err := plugins.ValidateKey(k); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(); err != nil {
		return err
	}
	for _, k := range keys {
		delete(m.objects, k)
	}
	return nil
}

func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}
