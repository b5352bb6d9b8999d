package blockdev

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkHeadWrite measures 4 KiB random writes through a Manager's
// head device (the path every frontend's writes take, write gate
// included), on one goroutine and on GOMAXPROCS goroutines.
func BenchmarkHeadWrite(b *testing.B) {
	const size = 256 << 20
	m, err := OpenManager(b.Context(), b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Close() })
	if _, err := m.Create(b.Context(), "bench", size); err != nil {
		b.Fatal(err)
	}
	dev, release, err := m.Open(b.Context(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(release)
	// Every block written once: the timed writes overwrite, as a running
	// volume's do, rather than grow the layer.
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := dev.WriteAt(b.Context(), buf, off, 0); err != nil {
			b.Fatal(err)
		}
	}
	run := func(b *testing.B, parallel bool) {
		b.SetBytes(4096)
		b.ReportAllocs()
		ctx := b.Context()
		write := func(r *rand.Rand, p []byte) {
			if _, err := dev.WriteAt(ctx, p, r.Int64N(size/4096)*4096, 0); err != nil {
				b.Error(err)
			}
		}
		if !parallel {
			r, p := rand.New(rand.NewPCG(1, 2)), make([]byte, 4096)
			for b.Loop() {
				write(r, p)
			}
			return
		}
		b.RunParallel(func(pb *testing.PB) {
			r, p := rand.New(rand.NewPCG(rand.Uint64(), 2)), make([]byte, 4096)
			for pb.Next() {
				write(r, p)
			}
		})
	}
	b.Run("serial", func(b *testing.B) { run(b, false) })
	b.Run("parallel", func(b *testing.B) { run(b, true) })
}

// BenchmarkWriteGate is the cost the write gate adds to each write, zero
// and trim (enter and leave it, not held), alone and contended.
func BenchmarkWriteGate(b *testing.B) {
	var g writeGate
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			g.mu.RLock()
			g.mu.RUnlock() //nolint:staticcheck // the empty critical section is what is measured
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				g.mu.RLock()
				g.mu.RUnlock() //nolint:staticcheck // the empty critical section is what is measured
			}
		})
	})
}
