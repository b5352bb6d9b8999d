package backupd

import (
	"math/rand/v2"
	"syscall"
	"testing"
	"time"
)

// cpuTime returns the process's user+system CPU time. The benchmarks
// report it per op ("cpu-ns/op") beside the wall time: on a shared machine
// it moves much less with the load than ns/op.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the CPU time since start per op.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// The benchmarks run the engine against the fs target in a temporary
// directory with an in-memory source, so they measure hashing,
// compression, packing and the target, not the volume store.

const benchSize = 64 << 20

func benchData(b *testing.B, compressible bool) []byte {
	b.Helper()
	data := RandomData(rand.New(rand.NewPCG(61, 62)), benchSize)
	if compressible {
		for i := 0; i < len(data); i += 4096 {
			clear(data[i+1024 : i+4096]) // ~4:1
		}
	}
	return data
}

func BenchmarkBackupFull(b *testing.B) {
	for _, tc := range []struct {
		name         string
		compressible bool
		encrypted    bool
	}{
		{name: "random"},
		{name: "compressible", compressible: true},
		{name: "random-encrypted", encrypted: true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			data := benchData(b, tc.compressible)
			b.SetBytes(benchSize)
			b.ReportAllocs()
			cpu0 := cpuTime()
			for b.Loop() {
				b.StopTimer()
				opts := &Options{}
				if tc.encrypted {
					opts.Key = testKey(b)
				}
				r := Open(NewFSTarget(b, b.TempDir()), opts)
				b.StartTimer()
				if _, err := r.Backup(b.Context(), BackupOptions{Volume: "v", Snapshot: "s", Source: &memSource{data: data}}); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu0)
		})
	}
}

// benchFullBackup makes an unencrypted fs repository holding one full
// backup of a volume of benchSize random bytes (benchData), returned with
// the repository and the data.
func benchFullBackup(b *testing.B) ([]byte, *Repository, *Result) {
	b.Helper()
	data := benchData(b, false)
	r := Open(NewFSTarget(b, b.TempDir()), nil)
	res, err := r.Backup(b.Context(), BackupOptions{Volume: "v", Snapshot: "s", Source: &memSource{data: data}})
	if err != nil {
		b.Fatal(err)
	}
	return data, r, res
}

// BenchmarkBackupIncremental backs up 1% scattered 4 KiB changes; bytes/s
// is relative to the volume size.
func BenchmarkBackupIncremental(b *testing.B) {
	data, r, parent := benchFullBackup(b)
	rng := rand.New(rand.NewPCG(63, 64))
	b.SetBytes(benchSize)
	b.ReportAllocs()
	cpu0 := cpuTime()
	for b.Loop() {
		b.StopTimer()
		var changed []Extent
		for range benchSize / 4096 / 100 {
			off := rng.Int64N(benchSize/4096) * 4096
			copy(data[off:off+4096], RandomData(rng, 4096))
			changed = append(changed, Extent{Offset: off, Length: 4096})
		}
		b.StartTimer()
		res, err := r.Backup(b.Context(), BackupOptions{Volume: "v", Snapshot: "s", Source: &memSource{data: data}, Parent: parent.ID, Changed: changed})
		if err != nil {
			b.Fatal(err)
		}
		parent = res
	}
	reportCPU(b, cpu0)
}

func BenchmarkRestore(b *testing.B) {
	data, r, res := benchFullBackup(b)
	dst := &memDest{data: make([]byte, benchSize)}
	b.SetBytes(benchSize)
	b.ReportAllocs()
	cpu0 := cpuTime()
	for b.Loop() {
		if _, err := r.Restore(b.Context(), res.ManifestKey, dst, RestoreOptions{DestZeroed: true}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportCPU(b, cpu0)
	MustEqual(b, "restored", dst.data, data)
}

// BenchmarkGC measures a GC run (DryRun, so every run does the same work)
// over a volume's history: a full backup of benchSize and 30 incrementals
// that each change 1 MiB, so the backups share almost all their map pages.
// The manifests-pages metric is the map pages the backups list in all.
func BenchmarkGC(b *testing.B) {
	data, r, res := benchFullBackup(b)
	rng := rand.New(rand.NewPCG(65, 66))
	pages := len(res.Manifest.Pages)
	for range 30 {
		off := rng.Int64N(benchSize>>20) << 20
		copy(data[off:off+1<<20], RandomData(rng, 1<<20))
		var err error
		res, err = r.Backup(b.Context(), BackupOptions{Volume: "v", Snapshot: "s", Source: &memSource{data: data}, Parent: res.ID,
			Changed: []Extent{{Offset: off, Length: 1 << 20}}})
		if err != nil {
			b.Fatal(err)
		}
		pages += len(res.Manifest.Pages)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.GC(b.Context(), GCOptions{DryRun: true}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(pages), "manifests-pages")
}
