package blockdev_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/snapshot"
)

const size = 1 << 20

// open returns the head and a snapshot view ("vol@s1", holding 'a' bytes
// in its first block) of a fresh volume.
func open(t *testing.T) (head, snap blockdev.Volume) {
	t.Helper()
	ctx := t.Context()
	s, err := snapshot.OpenStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	v, err := s.Create(ctx, "vol", size)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(bytes.Repeat([]byte{'a'}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Snapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	vw, err := v.OpenSnapshot(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = vw.Close() })
	return blockdev.FromSnapshot(v), blockdev.FromView(vw)
}

func TestErrors(t *testing.T) {
	t.Parallel()
	head, snap := open(t)
	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	buf := make([]byte, 4096)
	tests := []struct {
		name string
		op   func() error
		want error
	}{
		{name: "write past end", op: func() error { _, err := head.WriteAt(t.Context(), buf, size-100, 0); return err }, want: blockdev.ErrOutOfRange},
		{name: "write past end is invalid", op: func() error { _, err := head.WriteAt(t.Context(), buf, size, 0); return err }, want: blockdev.ErrInvalidArgument},
		{name: "negative offset", op: func() error { _, err := head.ReadAt(t.Context(), buf, -1); return err }, want: blockdev.ErrInvalidArgument},
		{name: "zero past end", op: func() error { return head.Zero(t.Context(), size-4096, 8192, 0) }, want: blockdev.ErrOutOfRange},
		{name: "trim past end", op: func() error { return head.Trim(t.Context(), 0, size+1, 0) }, want: blockdev.ErrOutOfRange},
		{name: "read past end", op: func() error { _, err := head.ReadAt(t.Context(), buf, size-100); return err }, want: io.EOF},
		{name: "write to snapshot", op: func() error { _, err := snap.WriteAt(t.Context(), buf, 0, 0); return err }, want: blockdev.ErrReadOnly},
		{name: "zero snapshot", op: func() error { return snap.Zero(t.Context(), 0, 4096, 0) }, want: blockdev.ErrReadOnly},
		{name: "trim snapshot", op: func() error { return snap.Trim(t.Context(), 0, 4096, 0) }, want: blockdev.ErrReadOnly},
		{name: "canceled read", op: func() error { _, err := head.ReadAt(canceled, buf, 0); return err }, want: context.Canceled},
		{name: "canceled write", op: func() error { _, err := head.WriteAt(canceled, buf, 0, 0); return err }, want: context.Canceled},
		{name: "canceled flush", op: func() error { return head.Flush(canceled) }, want: context.Canceled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.op(); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	// Nothing above changed the snapshot or the head's first block.
	for _, d := range []blockdev.Volume{head, snap} {
		if _, err := d.ReadAt(t.Context(), buf, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, bytes.Repeat([]byte{'a'}, 4096)) {
			t.Fatalf("%s: first block changed", d.Name())
		}
	}
}

func TestDescribe(t *testing.T) {
	t.Parallel()
	head, snap := open(t)
	tests := []struct {
		dev      blockdev.Volume
		name     string
		readOnly bool
	}{
		{dev: head, name: "vol", readOnly: false},
		{dev: snap, name: "vol@s1", readOnly: true},
	}
	for _, tc := range tests {
		if tc.dev.Name() != tc.name || tc.dev.ReadOnly() != tc.readOnly || tc.dev.Size() != size {
			t.Errorf("%s: name %q read-only %v size %d", tc.name, tc.dev.Name(), tc.dev.ReadOnly(), tc.dev.Size())
		}
	}
	ctx := t.Context()
	if err := head.Zero(ctx, 8192, 8192, blockdev.FUA); err != nil {
		t.Fatal(err)
	}
	if err := head.Trim(ctx, 65536, 65536, 0); err != nil {
		t.Fatal(err)
	}
	got, err := head.Extents(ctx, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	want := []blockdev.Extent{
		{Offset: 0, Length: 4096, Kind: blockdev.ExtentData},
		{Offset: 4096, Length: 4096, Kind: blockdev.ExtentHole},
		{Offset: 8192, Length: 8192, Kind: blockdev.ExtentZero},
		{Offset: 16384, Length: size - 16384, Kind: blockdev.ExtentHole},
	}
	if len(got) != len(want) {
		t.Fatalf("extents %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("extents %v, want %v", got, want)
		}
	}
}

// TestConcurrentCallers writes and reads through the interface from many
// goroutines, each checking it reads its own writes.
func TestConcurrentCallers(t *testing.T) {
	t.Parallel()
	head, _ := open(t)
	ctx := t.Context()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			region := int64(g) * (size / 8)
			p := make([]byte, 6000)
			got := make([]byte, len(p))
			for i := range 200 {
				for j := range p {
					p[j] = byte(g*7 + i + j)
				}
				off := region + int64(i*37)%(size/8-int64(len(p)))
				flags := blockdev.WriteFlags(0)
				if i%50 == 0 {
					flags = blockdev.FUA
				}
				if _, err := head.WriteAt(ctx, p, off, flags); err != nil {
					t.Error(err)
					return
				}
				if _, err := head.ReadAt(ctx, got, off); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(got, p) {
					t.Errorf("goroutine %d: read differs from its write at %d", g, off)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := head.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}
