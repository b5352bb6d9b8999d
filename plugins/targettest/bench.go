package targettest

import (
	"bytes"
	"fmt"
	"io"
	"sync/atomic"
	"testing"

	"github.com/strata-block/strata/plugins"
)

// BenchSizes are the object sizes Bench measures.
var BenchSizes = []int{64 << 10, 4 << 20}

// BenchStreams is how many Puts or Gets the parallel benchmarks keep in
// flight, as a backup uploading chunks does.
const BenchStreams = 8

// Bench measures Put and Get throughput of the targets opens makes, for
// each of BenchSizes: sub-benchmarks op/size/name, so that the same size
// through different paths (in-process, plugin) sit side by side. Put and
// Get run one call at a time; PutParallel and GetParallel keep
// BenchStreams calls in flight on distinct keys.
func Bench(b *testing.B, opens map[string]func(b *testing.B) plugins.Target) {
	benchSerial(b, opens)
	benchParallel(b, opens)
}

func benchParallel(b *testing.B, opens map[string]func(b *testing.B) plugins.Target) {
	for _, op := range []string{"PutParallel", "GetParallel"} {
		for _, size := range BenchSizes {
			for _, name := range []string{"inprocess", "plugin"} {
				open, ok := opens[name]
				if !ok {
					continue
				}
				b.Run(fmt.Sprintf("%s/%dKiB/%s", op, size>>10, name), func(b *testing.B) {
					tg := open(b)
					data := Data(uint64(size), size)
					for i := range BenchStreams {
						if err := tg.Put(b.Context(), fmt.Sprintf("bench/p%d", i), bytes.NewReader(data), int64(size)); err != nil {
							b.Fatal(err)
						}
					}
					var next atomic.Int64
					b.SetBytes(int64(size))
					b.ReportAllocs()
					b.SetParallelism((BenchStreams + 1) / 2)
					b.ResetTimer()
					b.RunParallel(func(pb *testing.PB) {
						key := fmt.Sprintf("bench/p%d", next.Add(1)%BenchStreams)
						rd := bytes.NewReader(data)
						buf := make([]byte, 1<<20)
						for pb.Next() {
							if op == "PutParallel" {
								rd.Reset(data)
								if err := tg.Put(b.Context(), key, rd, int64(size)); err != nil {
									b.Error(err)
									return
								}
								continue
							}
							rc, _, err := tg.Get(b.Context(), key, 0, -1)
							if err != nil {
								b.Error(err)
								return
							}
							_, err = io.CopyBuffer(io.Discard, rc, buf)
							rc.Close()
							if err != nil {
								b.Error(err)
								return
							}
						}
					})
				})
			}
		}
	}
}

func benchSerial(b *testing.B, opens map[string]func(b *testing.B) plugins.Target) {
	for _, op := range []string{"Put", "Get"} {
		for _, size := range BenchSizes {
			for _, name := range []string{"inprocess", "plugin"} {
				open, ok := opens[name]
				if !ok {
					continue
				}
				b.Run(fmt.Sprintf("%s/%dKiB/%s", op, size>>10, name), func(b *testing.B) {
					tg := open(b)
					data := Data(uint64(size), size)
					rd := bytes.NewReader(data)
					put := func() {
						rd.Reset(data)
						if err := tg.Put(b.Context(), "bench/obj", rd, int64(size)); err != nil {
							b.Fatal(err)
						}
					}
					put()
					buf := make([]byte, 1<<20)
					b.SetBytes(int64(size))
					b.ReportAllocs()
					b.ResetTimer()
					for b.Loop() {
						if op == "Put" {
							put()
							continue
						}
						rc, n, err := tg.Get(b.Context(), "bench/obj", 0, -1)
						if err != nil {
							b.Fatal(err)
						}
						m, err := io.CopyBuffer(io.Discard, rc, buf)
						rc.Close()
						if err != nil || m != n || n != int64(size) {
							b.Fatalf("Get: %d of %d bytes, %v", m, size, err)
						}
					}
				})
			}
		}
	}
}
