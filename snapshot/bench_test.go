package snapshot

// Benchmarks for the I/O path over chains of different depths and for
// Snapshot latency on a small dense and a huge sparse volume. Run them with
// benchmarks/snapshot.sh, which records the machine and summarises the
// results; see also TestIndexMemory1TiB in memory_test.go.
//
// What is measured. Every volume lives in a store in a temporary directory
// on whatever filesystem holds it, and its data is in the page cache (a
// 1 GiB fixture fits easily): the numbers are the store's own overhead per
// operation — locks, index lookup, checksums, dirty-set bookkeeping and one
// pread/pwrite per resolved segment — not the disk's. That is what the
// depth-flatness requirement is about. Writes include their share of the
// background flushes (fdatasync) the store starts when the dirty set is
// large and old (FORMAT.md, "In-memory index and memory budget").

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

const (
	benchMiB       = 1 << 20
	benchGiB       = 1 << 30
	benchTiB       = 1 << 40
	benchRegion    = benchMiB // unit of the fixtures' large writes
	benchPoolSize  = 9 * benchMiB
	benchPoolSlots = (benchPoolSize - benchRegion) / BlockSize // 4 KiB-aligned starts leaving a whole region
	benchNumOffs   = 1 << 16                                   // pre-generated random offsets (a power of two)
)

// benchPool is random data the fixtures and write benchmarks take their
// content from, so no benchmark pays for generating random bytes. Contents
// are chosen by (region or block, layer) through benchPoolAt, which lets a
// check recompute what any block should read.
var benchPool = sync.OnceValue(func() []byte {
	p := make([]byte, benchPoolSize)
	rng := rand.NewChaCha8([32]byte{'s', 't', 'r', 'a', 't', 'a'})
	_, _ = rng.Read(p)
	return p
})

// benchPoolAt returns n bytes of the pool chosen by key.
func benchPoolAt(key uint64, n int) []byte {
	slot := (key * 0x9e3779b97f4a7c15 >> 32) % benchPoolSlots
	return benchPool()[slot*BlockSize:][:n]
}

func benchRegionKey(region uint64, layer int) uint64 { return region<<8 | uint64(layer) }

// benchFatal stops the timer and fails: keeps failure paths out of the
// timed region's code size and makes sure nothing after is timed.
func benchFatal(b *testing.B, format string, args ...any) {
	b.Helper()
	b.StopTimer()
	b.Fatalf(format, args...)
}

// benchFillRegions writes the given 1 MiB regions with content chosen by
// (region, layer).
func benchFillRegions(tb testing.TB, v *Volume, regions []uint64, layer int) {
	tb.Helper()
	for _, r := range regions {
		if _, err := v.WriteAt(benchPoolAt(benchRegionKey(r, layer), benchRegion), int64(r)*benchRegion); err != nil {
			tb.Fatal(err)
		}
	}
}

// ioFixture is a 1 GiB volume whose chain has a given depth (layers, head
// included) and whose blocks resolve to every layer of it.
type ioFixture struct {
	v     *Volume
	depth int
	// owner[r] is the layer whose content region r reads; -1 for a region
	// holding scattered blocks as well (not checked).
	owner []int
}

// ioFixtureLayout is how data is spread over the layers above the base.
type ioFixtureLayout int

const (
	// layoutRegions: layer 0 holds the whole volume; every upper layer
	// (the head included) rewrites a different random 1/depth of the
	// 1 MiB regions. A 1 MiB-aligned read resolves to one layer, so this
	// isolates the cost of chain depth from the cost of fragmentation.
	layoutRegions ioFixtureLayout = iota
	// layoutScattered: layer 0 holds the whole volume; 16,384 random 4 KiB
	// blocks (1/16 of the volume) are rewritten, spread evenly over the
	// upper layers (at depth 1, over the same single layer). A 1 MiB read
	// then resolves to about 33 segments when depth > 1.
	layoutScattered
)

const (
	ioVolSize         = benchGiB
	ioRegions         = ioVolSize / benchRegion
	ioScatteredBlocks = 16384
)

// newIOFixture creates volume name of 1 GiB in s with the given chain depth
// and layout, flushed, and checks a sample of what it reads.
func newIOFixture(b *testing.B, s *Store, name string, depth int, layout ioFixtureLayout) *ioFixture {
	b.Helper()
	ctx := b.Context()
	start := time.Now()
	v, err := s.Create(ctx, name, ioVolSize)
	if err != nil {
		b.Fatal(err)
	}
	f := &ioFixture{v: v, depth: depth, owner: make([]int, ioRegions)}
	rng := rand.New(rand.NewPCG(uint64(depth), uint64(layout)))
	all := make([]uint64, ioRegions)
	for i := range all {
		all[i] = uint64(i)
	}
	benchFillRegions(b, v, all, 0)
	var scattered []uint64
	if layout == layoutScattered {
		scattered = make([]uint64, ioScatteredBlocks)
		for i := range scattered {
			scattered[i] = rng.Uint64N(ioVolSize / BlockSize)
		}
		for _, blk := range scattered {
			f.owner[blk*BlockSize/benchRegion] = -1
		}
	}
	for layer := 1; layer < max(depth, 2); layer++ {
		if depth > 1 {
			if err := v.Snapshot(ctx, fmt.Sprintf("l%02d", layer-1)); err != nil {
				b.Fatal(err)
			}
		}
		switch layout {
		case layoutRegions:
			if depth == 1 {
				break
			}
			// A different random 1/depth of the regions; later layers
			// overwrite earlier ones, so about (1-1/depth)^(depth-1) of
			// the volume (38% at depth 16) still reads from layer 0.
			perm := rng.Perm(ioRegions)[:ioRegions/depth]
			regions := make([]uint64, len(perm))
			for i, r := range perm {
				regions[i] = uint64(r)
				f.owner[r] = layer
			}
			slices.Sort(regions)
			benchFillRegions(b, v, regions, layer)
		case layoutScattered:
			// Layer i of depth-1 upper layers gets the i-th slice of the
			// scattered blocks; at depth 1 all go to the one layer.
			n := max(depth-1, 1)
			part := scattered[(layer-1)*len(scattered)/n : layer*len(scattered)/n]
			for _, blk := range part {
				if _, err := v.WriteAt(benchPoolAt(blk<<8|uint64(layer), BlockSize), int64(blk)*BlockSize); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	if err := v.Flush(); err != nil {
		b.Fatal(err)
	}
	if got := v.Depth(); got != depth {
		b.Fatalf("fixture depth %d, want %d", got, depth)
	}
	// Check: regions read what the layer owning them wrote.
	buf := make([]byte, benchRegion)
	checked := 0
	for r := 0; r < ioRegions && checked < 64; r += 7 {
		if f.owner[r] < 0 {
			continue
		}
		if _, err := v.ReadAt(buf, int64(r)*benchRegion); err != nil {
			b.Fatal(err)
		}
		if !bytes.Equal(buf, benchPoolAt(benchRegionKey(uint64(r), f.owner[r]), benchRegion)) {
			b.Fatalf("fixture depth %d: region %d does not read what layer %d wrote", depth, r, f.owner[r])
		}
		checked++
	}
	b.Logf("fixture %s: depth %d, %d index runs, built in %v", name, depth, f.indexRuns(), time.Since(start).Round(time.Millisecond))
	return f
}

// indexRuns returns the number of runs in the volume's flattened index.
func (f *ioFixture) indexRuns() int {
	f.v.ci.mu.RLock()
	defer f.v.ci.mu.RUnlock()
	return f.v.ci.idx.len()
}

// benchOffsets returns benchNumOffs random offsets of size-aligned ranges
// inside a volume of volSize bytes.
func benchOffsets(seed uint64, volSize int64, size int) []int64 {
	rng := rand.New(rand.NewPCG(seed, 0x0ff5e7))
	offs := make([]int64, benchNumOffs)
	for i := range offs {
		offs[i] = rng.Int64N(volSize/int64(size)) * int64(size)
	}
	return offs
}

type ioOp struct {
	name  string
	size  int
	write bool
	rand  bool
}

// ioOps lists reads first: the fixtures are shared by every op of one
// depth, and the write ops change the head (and so the index) they read.
var ioOps = []ioOp{
	{name: "randread4k", size: BlockSize, rand: true},
	{name: "seqread1m", size: benchMiB},
	{name: "randwrite4k", size: BlockSize, write: true, rand: true},
	{name: "seqwrite1m", size: benchMiB, write: true},
}

// BenchmarkIO measures 4 KiB random and 1 MiB sequential reads and writes
// on a 1 GiB volume at chain depths 1, 4 and 16 (layoutRegions): reads
// must cost the same whatever the depth.
//
// One fixture per depth is built before the first timed run (not timed; a
// few seconds each) and shared by the ops and by -count repetitions, which
// run in the order of ioOps. Random 4 KiB writes overwrite random blocks of the volume (in the
// head); sequential 1 MiB writes walk the volume and wrap around. The
// index-runs metric is the size of the flattened index after the run.
func BenchmarkIO(b *testing.B) {
	benchIO(b, layoutRegions, ioOps, []int{1, 4, 16})
}

// BenchmarkIOScattered is BenchmarkIO's reads on layoutScattered fixtures:
// the cost of a fragmented chain, where one 1 MiB read resolves to many
// segments in different layer files (at depth 1 the same writes land in
// one layer and the index merges them into one run).
func BenchmarkIOScattered(b *testing.B) {
	benchIO(b, layoutScattered, ioOps[:2], []int{1, 16})
}

func benchIO(b *testing.B, layout ioFixtureLayout, ops []ioOp, depths []int) {
	dir := b.TempDir()
	s, err := OpenStore(dir, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := s.Close(); err != nil {
			b.Error(err)
		}
	})
	// Every depth's fixture is built on the first use of any, so the
	// writeback and page-cache churn of building one never overlaps
	// another's timed runs.
	var fixtures map[int]*ioFixture
	fixture := func(b *testing.B, depth int) *ioFixture {
		if fixtures == nil {
			fixtures = make(map[int]*ioFixture)
			for _, d := range depths {
				fixtures[d] = newIOFixture(b, s, fmt.Sprintf("depth-%d", d), d, layout)
			}
		}
		return fixtures[depth]
	}
	for _, op := range ops {
		b.Run("op="+op.name, func(b *testing.B) {
			for _, depth := range depths {
				b.Run(fmt.Sprintf("depth=%d", depth), func(b *testing.B) {
					benchIOOp(b, fixture(b, depth), op)
				})
			}
		})
	}
}

func benchIOOp(b *testing.B, f *ioFixture, op ioOp) {
	v := f.v
	var offs []int64
	if op.rand {
		offs = benchOffsets(uint64(f.depth)<<8|uint64(op.size>>12), ioVolSize, op.size)
	}
	buf := make([]byte, op.size)
	pool := benchPool()
	seqN := int64(ioVolSize / op.size)
	b.SetBytes(int64(op.size))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		var off int64
		if op.rand {
			off = offs[i&(benchNumOffs-1)]
		} else {
			off = int64(i) % seqN * int64(op.size)
		}
		var err error
		if op.write {
			// Content from the pool: no copy, and different from the
			// block's previous content.
			p := pool[(i&255)*BlockSize:][:op.size]
			_, err = v.WriteAt(p, off)
		} else {
			_, err = v.ReadAt(buf, off)
		}
		if err != nil {
			benchFatal(b, "%s at %d: %v", op.name, off, err)
		}
		i++
	}
	// b.Loop has stopped the timer.
	if op.write {
		if err := v.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(f.indexRuns()), "index-runs")
}

// snapVolume builds the volume of a BenchmarkSnapshot case, flushed, with
// its data sealed in a snapshot named "base".
func snapVolume(b *testing.B, s *Store, size string) *Volume {
	b.Helper()
	ctx := b.Context()
	start := time.Now()
	var v *Volume
	var err error
	switch size {
	case "1GiB":
		if v, err = s.Create(ctx, "dense", benchGiB); err != nil {
			b.Fatal(err)
		}
		regions := make([]uint64, benchGiB/benchRegion)
		for i := range regions {
			regions[i] = uint64(i)
		}
		benchFillRegions(b, v, regions, 0)
	case "1TiB-sparse":
		// 1 GiB written: 1008 distinct random 1 MiB regions plus 4096
		// scattered 4 KiB blocks, across the whole 1 TiB.
		if v, err = s.Create(ctx, "sparse", benchTiB); err != nil {
			b.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		seen := make(map[uint64]bool)
		var regions []uint64
		for len(regions) < 1008 {
			r := rng.Uint64N(benchTiB / benchRegion)
			if !seen[r] {
				seen[r] = true
				regions = append(regions, r)
			}
		}
		slices.Sort(regions)
		benchFillRegions(b, v, regions, 0)
		for range 4096 {
			blk := rng.Uint64N(benchTiB / BlockSize)
			if _, err := v.WriteAt(benchPoolAt(blk, BlockSize), int64(blk)*BlockSize); err != nil {
				b.Fatal(err)
			}
		}
	default:
		b.Fatalf("unknown size %q", size)
	}
	if err := v.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := v.Snapshot(ctx, "base"); err != nil {
		b.Fatal(err)
	}
	b.Logf("snapshot fixture %s: built in %v", size, time.Since(start).Round(time.Millisecond))
	return v
}

// snapWindow is the most per-iteration snapshots BenchmarkSnapshot keeps;
// older ones are deleted (merged, a few blocks each) with the timer stopped.
const snapWindow = 8

// snapDirtyBlocks is how many random 4 KiB blocks each iteration writes
// before its snapshot, so every snapshot flushes something.
const snapDirtyBlocks = 8

// BenchmarkSnapshot measures Snapshot latency on a 1 GiB volume fully
// written and on a 1 TiB sparse volume with 1 GiB written: Snapshot must be
// O(1) in both. Each iteration writes a few random 4 KiB blocks (timer
// stopped) and times one Snapshot, which includes flushing those blocks
// (fdatasync of data and log), creating the new head and writing the
// volume metadata (fsyncs): so the time is mostly the filesystem's fsync
// latency. The chain holds "base" plus at most snapWindow more snapshots.
//
// Besides ns/op it reports the p50 and p99 of the per-call latencies
// (ms/op-p50, ms/op-p99); use a fixed -benchtime=Nx with N ≥ 100 so p99 is
// meaningful.
func BenchmarkSnapshot(b *testing.B) {
	for _, size := range []string{"1GiB", "1TiB-sparse"} {
		b.Run("size="+size, func(b *testing.B) {
			s, err := OpenStore(b.TempDir(), nil)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			v := snapVolume(b, s, size)
			ctx := b.Context()
			rng := rand.New(rand.NewPCG(3, 4))
			volBlocks := uint64(v.Size()) / BlockSize
			pool := benchPool()
			var lat []time.Duration
			var live []string
			var err2 error
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				b.StopTimer()
				if err2 != nil {
					b.Fatal(err2)
				}
				if len(live) == snapWindow {
					if err := v.DeleteSnapshot(ctx, live[0]); err != nil {
						b.Fatal(err)
					}
					live = live[1:]
				}
				for j := range snapDirtyBlocks {
					blk := rng.Uint64N(volBlocks)
					if _, err := v.WriteAt(pool[(i+j)%256*BlockSize:][:BlockSize], int64(blk)*BlockSize); err != nil {
						b.Fatal(err)
					}
				}
				name := fmt.Sprintf("s%07d", i)
				i++
				b.StartTimer()
				t0 := time.Now()
				err2 = v.Snapshot(ctx, name)
				lat = append(lat, time.Since(t0))
				live = append(live, name)
			}
			if err2 != nil {
				b.Fatal(err2)
			}
			if got := v.Depth(); got != len(live)+2 {
				b.Fatalf("depth %d, want %d", got, len(live)+2)
			}
			slices.Sort(lat)
			pct := func(p float64) float64 {
				return float64(lat[int(p*float64(len(lat)-1))]) / float64(time.Millisecond)
			}
			b.ReportMetric(pct(0.50), "ms/op-p50")
			b.ReportMetric(pct(0.99), "ms/op-p99")
		})
	}
}
