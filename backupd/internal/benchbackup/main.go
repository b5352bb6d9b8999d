// Command benchbackup runs one round of the volume-backup benchmark of
// issue 7 and prints its figures as one JSON object: Strata's backup engine
// (through the real volume store and an fs target, encrypted like restic)
// against restic on the same image, step by step — full backup of a 1 GiB
// random volume, incremental after a 10 MiB contiguous change, incremental
// after 1% scattered 4 KiB writes, and a restore (Strata's into a new
// volume of the store, as the backup service restores) — with the order of the
// two tools alternating per round. benchmarks/backup.sh runs the rounds.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"runtime/trace"
	"syscall"
	"time"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/blockdev"
	pfs "github.com/strata-block/strata/plugins/fs"
)

type step struct {
	Name          string  `json:"step"`
	StrataSeconds float64 `json:"strata_s"`
	ResticSeconds float64 `json:"restic_s"`
	StrataBytes   int64   `json:"strata_bytes"` // stored on the target by this step
	ResticBytes   int64   `json:"restic_bytes"`
	ChangedBytes  int64   `json:"changed_bytes"`
	// CPU time (user + system) of the step: on a shared machine it moves
	// much less with the load than the wall time. Strata's is its whole
	// process's during the step, restic's its child process's.
	StrataCPU float64 `json:"strata_cpu_s"`
	ResticCPU float64 `json:"restic_cpu_s"`
	// DiskSeconds, on the full and restore steps: how long a plain write
	// of the volume's size into a new file took in the same round, with
	// one fsync at the end (as dd conv=fsync): what making that much data
	// durable costs on this machine's disk, the reference for a full
	// backup (to an fs target that fsyncs its objects) and for a restore
	// that returns once its data is durable.
	DiskSeconds float64 `json:"disk_s,omitempty"`
}

// cpuSeconds returns this process's user + system CPU time.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func main() {
	dir := flag.String("dir", "", "work directory (emptied)")
	size := flag.Int64("size", 1<<30, "volume size")
	restic := flag.String("restic", "restic", `restic binary ("none": measure Strata only)`)
	round := flag.Int("round", 0, "round number: even runs Strata first, odd restic first")
	flag.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of Strata's part of -profile-step to this file")
	flag.StringVar(&traceFile, "trace", "", "write an execution trace of Strata's part of -profile-step to this file (go tool trace; -pprof=syscall or sync shows where it waits)")
	flag.BoolVar(&phases, "phases", false, "print the time each of Strata's phases starts, per step, to stderr")
	flag.BoolVar(&withState, "state", true, "restore with a state file, checkpointing (flushing) each window as the backup service does to be resumable after a kill; -state=false measures the engine without")
	flag.StringVar(&restoreTo, "restore-to", "volume", `Strata restores into a new volume of the store ("volume", as the backup service does) or into a file ("file")`)
	flag.StringVar(&profileStep, "profile-step", "full", "step to profile: full, incremental-10MiB-contiguous, incremental-1pct-scattered-4KiB, restore")
	flag.Parse()
	if err := run(context.Background(), *dir, *size, *restic, *round); err != nil {
		fmt.Fprintln(os.Stderr, "benchbackup:", err)
		os.Exit(1)
	}
}

var (
	cpuProfile, profileStep, traceFile string
	restoreTo                          string
	phases, withState                  bool
)

// phaseLog returns a progress function printing phase changes with the
// time since t0 (nil unless -phases).
func phaseLog(step string, t0 time.Time) backupd.ProgressFunc {
	if !phases {
		return nil
	}
	last, lastAt := backupd.Phase(""), t0
	return func(p backupd.Progress) {
		if p.Phase != last {
			if last != "" {
				fmt.Fprintf(os.Stderr, "%s: last %s event at %.3fs\n", step, last, lastAt.Sub(t0).Seconds())
			}
			last = p.Phase
			fmt.Fprintf(os.Stderr, "%s: %s at %.3fs\n", step, p.Phase, p.Time.Sub(t0).Seconds())
		}
		lastAt = p.Time
	}
}

// profiled runs fn under the CPU profiler when step is the one -cpuprofile
// asks for.
func profiled(step string, fn func() error) func() error {
	if (cpuProfile == "" && traceFile == "") || step != profileStep {
		return fn
	}
	return func() error {
		if cpuProfile != "" {
			f, err := os.Create(cpuProfile)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
			defer pprof.StopCPUProfile()
		}
		if traceFile != "" {
			f, err := os.Create(traceFile)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := trace.Start(f); err != nil {
				return err
			}
			defer trace.Stop()
		}
		return fn()
	}
}

func run(ctx context.Context, dir string, size int64, restic string, round int) error {
	if dir == "" {
		return fmt.Errorf("-dir is required")
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	for _, d := range []string{"store", "target", "restic", "restore"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return err
		}
	}
	m, err := blockdev.OpenManager(ctx, filepath.Join(dir, "store"), nil)
	if err != nil {
		return err
	}
	defer m.Close()
	if _, err := m.Create(ctx, "vol", size); err != nil {
		return err
	}
	dev, release, err := m.Open(ctx, "vol")
	if err != nil {
		return err
	}
	defer release()
	img, err := os.Create(filepath.Join(dir, "vol.img"))
	if err != nil {
		return err
	}
	defer img.Close()
	write := func(p []byte, off int64) error {
		if _, err := dev.WriteAt(ctx, p, off, 0); err != nil {
			return err
		}
		_, err := img.WriteAt(p, off)
		return err
	}
	src := rand.NewChaCha8([32]byte{byte(round)})
	rng := rand.New(src)
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		_, _ = src.Read(buf)
		if err := write(buf, off); err != nil {
			return err
		}
	}
	if err := dev.Flush(ctx); err != nil {
		return err
	}
	if err := img.Sync(); err != nil {
		return err
	}

	tg, err := pfs.New(filepath.Join(dir, "target"))
	if err != nil {
		return err
	}
	defer tg.Close()
	secret := make([]byte, 32)
	_, _ = src.Read(secret)
	key, err := backupd.NewKey(secret)
	if err != nil {
		return err
	}
	repo := backupd.Open(tg, &backupd.Options{Key: key})
	env := append(os.Environ(), "RESTIC_PASSWORD=bench", "RESTIC_REPOSITORY="+filepath.Join(dir, "restic"), "RESTIC_CACHE_DIR="+filepath.Join(dir, "restic-cache"))
	var resticCPU float64 // of the last restic command
	resticCmd := func(args ...string) error {
		resticCPU = 0
		if restic == "none" {
			return nil
		}
		cmd := exec.CommandContext(ctx, restic, args...)
		cmd.Env = env
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("restic %v: %w: %s", args, err, out)
		}
		resticCPU = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
		return nil
	}
	if err := resticCmd("init"); err != nil {
		return err
	}

	var steps []step
	snapN := 0
	var lastManifest string
	measure := func(name string, changed int64) error {
		snapN++
		snap := fmt.Sprintf("s%d", snapN)
		if _, err := m.Snapshot(ctx, "vol", snap); err != nil {
			return err
		}
		st := step{Name: name, ChangedBytes: changed}
		strata := func() error {
			before := du(filepath.Join(dir, "target"))
			t0, c0 := time.Now(), cpuSeconds()
			res, err := repo.BackupVolume(ctx, m, "vol", snap, backupd.BackupOptions{Progress: phaseLog(name, t0)})
			if err != nil {
				return err
			}
			st.StrataSeconds, st.StrataCPU = time.Since(t0).Seconds(), cpuSeconds()-c0
			st.StrataBytes = du(filepath.Join(dir, "target")) - before
			lastManifest = res.ManifestKey
			return nil
		}
		rest := func() error {
			before := du(filepath.Join(dir, "restic"))
			t0 := time.Now()
			if err := resticCmd("backup", "--no-scan", "-q", "vol.img"); err != nil {
				return err
			}
			st.ResticSeconds, st.ResticCPU = time.Since(t0).Seconds(), resticCPU
			st.ResticBytes = du(filepath.Join(dir, "restic")) - before
			return nil
		}
		if err := alternate(round, profiled(name, strata), rest); err != nil {
			return err
		}
		steps = append(steps, st)
		return nil
	}
	if err := measure("full", size); err != nil {
		return err
	}
	// 10 MiB contiguous, at a random 4 KiB-aligned offset.
	off := rng.Int64N((size-10<<20)/4096) * 4096
	for i := int64(0); i < 10; i++ {
		_, _ = src.Read(buf)
		if err := write(buf, off+i<<20); err != nil {
			return err
		}
	}
	if err := syncBoth(ctx, dev, img); err != nil {
		return err
	}
	if err := measure("incremental-10MiB-contiguous", 10<<20); err != nil {
		return err
	}
	// 1% of the 4 KiB blocks, scattered.
	blocks := size / 4096
	n := blocks / 100
	for i := int64(0); i < n; i++ {
		_, _ = src.Read(buf[:4096])
		if err := write(buf[:4096], rng.Int64N(blocks)*4096); err != nil {
			return err
		}
	}
	if err := syncBoth(ctx, dev, img); err != nil {
		return err
	}
	if err := measure("incremental-1pct-scattered-4KiB", n*4096); err != nil {
		return err
	}

	// The disk's reference, measured where the page cache is as the
	// restore finds it.
	disk, err := plainWrite(ctx, filepath.Join(dir, "disk.img"), size)
	if err != nil {
		return err
	}
	steps[0].DiskSeconds = disk

	// Restore the latest backup with each tool.
	st := step{Name: "restore", ChangedBytes: size, DiskSeconds: disk}
	var restored func() error // compares what Strata restored with the image
	strata := func() error {
		var dst backupd.Destination
		switch restoreTo {
		case "volume":
			// A new volume of the store, as the backup service restores
			// (into the volume's head layer, flushed through the store).
			if _, err := m.Create(ctx, "restored", size); err != nil {
				return err
			}
			rdev, rrelease, err := m.Open(ctx, "restored")
			if err != nil {
				return err
			}
			defer rrelease()
			dst = backupd.VolumeDestination{V: rdev}
			restored = func() error {
				v, release, err := m.Open(ctx, "restored")
				if err != nil {
					return err
				}
				defer release()
				return sameVolume(ctx, v, filepath.Join(dir, "vol.img"))
			}
		case "file":
			f, err := os.Create(filepath.Join(dir, "restore", "strata.img"))
			if err != nil {
				return err
			}
			defer f.Close()
			if err := f.Truncate(size); err != nil {
				return err
			}
			dst = backupd.FileDestination{F: f, N: size}
			restored = func() error {
				return sameFile(filepath.Join(dir, "restore", "strata.img"), filepath.Join(dir, "vol.img"))
			}
		default:
			return fmt.Errorf("-restore-to %q: want volume or file", restoreTo)
		}
		t0, c0 := time.Now(), cpuSeconds()
		opts := backupd.RestoreOptions{DestZeroed: true, Progress: phaseLog("restore", t0)}
		if withState {
			opts.StatePath = filepath.Join(dir, "restore", "strata.state") // as the backup service restores
		}
		if _, err := repo.Restore(ctx, lastManifest, dst, opts); err != nil {
			return err
		}
		st.StrataSeconds, st.StrataCPU = time.Since(t0).Seconds(), cpuSeconds()-c0
		return nil
	}
	// restic does not fsync what it restores, and Strata's restore
	// returns once its data is durable: restore-durable adds the fsync of
	// restic's restored image to its time (Strata's is the same restore).
	var resticDurable float64
	rest := func() error {
		t0 := time.Now()
		if err := resticCmd("restore", "latest", "-q", "--target", filepath.Join(dir, "restore", "restic")); err != nil {
			return err
		}
		st.ResticSeconds, st.ResticCPU = time.Since(t0).Seconds(), resticCPU
		if restic == "none" {
			return nil
		}
		f, err := os.Open(filepath.Join(dir, "restore", "restic", "vol.img"))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := f.Sync(); err != nil {
			return err
		}
		resticDurable = time.Since(t0).Seconds()
		return nil
	}
	if err := alternate(round, profiled("restore", strata), rest); err != nil {
		return err
	}
	steps = append(steps, st, step{Name: "restore-durable", StrataSeconds: st.StrataSeconds, StrataCPU: st.StrataCPU, ResticSeconds: resticDurable, ChangedBytes: size, DiskSeconds: disk})
	if err := restored(); err != nil {
		return err
	}
	if restic != "none" {
		if err := sameFile(filepath.Join(dir, "restore", "restic", "vol.img"), filepath.Join(dir, "vol.img")); err != nil {
			return err
		}
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]any{"round": round, "size": size, "steps": steps})
}

// plainWrite writes size bytes into a new file at path in 1 MiB writes,
// fsyncs it once, removes it, and returns the seconds that took.
func plainWrite(ctx context.Context, path string, size int64) (float64, error) {
	buf := make([]byte, 1<<20)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(buf) // never fails
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer os.Remove(path)
	defer f.Close()
	t0 := time.Now()
	for off := int64(0); off < size; off += int64(len(buf)) {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if _, err := f.Write(buf[:min(int64(len(buf)), size-off)]); err != nil {
			return 0, err
		}
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return time.Since(t0).Seconds(), nil
}

func alternate(round int, a, b func() error) error {
	if round%2 == 1 {
		a, b = b, a
	}
	if err := a(); err != nil {
		return err
	}
	return b()
}

func syncBoth(ctx context.Context, dev blockdev.Volume, img *os.File) error {
	if err := dev.Flush(ctx); err != nil {
		return err
	}
	return img.Sync()
}

// du returns the bytes allocated under dir.
func du(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// sameFile checks that the restored image equals the source image.
// sameVolume compares volume v with the file at path, bit for bit.
func sameVolume(ctx context.Context, v blockdev.Volume, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	bv, bf := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < v.Size(); off += int64(len(bv)) {
		p := bv[:min(int64(len(bv)), v.Size()-off)]
		if _, err := v.ReadAt(ctx, p, off); err != nil {
			return fmt.Errorf("restored volume: read at %d: %w", off, err)
		}
		if n, err := f.ReadAt(bf[:len(p)], off); n != len(p) || !bytes.Equal(p, bf[:n]) {
			return fmt.Errorf("restored volume differs from the source at offset %d (%v)", off, err)
		}
	}
	return nil
}

func sameFile(a, b string) error {
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return err
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); ; off += int64(len(ba)) {
		na, ea := fa.ReadAt(ba, off)
		nb, _ := fb.ReadAt(bb, off)
		if na != nb || string(ba[:na]) != string(bb[:nb]) {
			return fmt.Errorf("restored %s differs from the source at offset %d", a, off)
		}
		if ea != nil {
			return nil
		}
	}
}
