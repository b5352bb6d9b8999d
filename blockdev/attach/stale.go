package attach

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// fuseSuperMagic is statfs(2)'s f_type of a FUSE filesystem.
const fuseSuperMagic = 0x65735546

// Cleaned reports what CleanStale released.
type Cleaned struct {
	// Unmounted lists the mount points of filesystems that were mounted
	// on stale loop devices.
	Unmounted []string
	// Detached lists the stale loop devices ("/dev/loopN").
	Detached []string
}

// CleanStale releases what a killed server left behind over the FUSE mount
// at fuseDir: filesystems mounted on loop devices whose backing file is
// in fuseDir are lazily unmounted (MNT_DETACH: the server that mounted
// them is gone, and a dead FUSE file below would fail a normal unmount's
// writes), then those loop devices are detached. Call it at start, before
// fuse.Mount, which then detaches the dead FUSE mount itself: the loop
// devices are found by their backing file's path, which names fuseDir only
// while the dead mount is still attached there.
//
// It refuses (ErrBusy) when fuseDir holds a live FUSE mount: another
// server's devices are not stale.
func CleanStale(ctx context.Context, fuseDir string, log *slog.Logger) (Cleaned, error) {
	var c Cleaned
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fuseDir, err := filepath.Abs(fuseDir)
	if err != nil {
		return c, fmt.Errorf("clean stale %s: %w", fuseDir, err)
	}
	// The kernel names a loop device's backing file by its real path:
	// resolve the symlinks above the mount point (not the mount point
	// itself, whose dead FUSE server would fail the lookup).
	if parent, err := filepath.EvalSymlinks(filepath.Dir(fuseDir)); err == nil {
		fuseDir = filepath.Join(parent, filepath.Base(fuseDir))
	}
	if live, err := liveFUSE(fuseDir); err != nil {
		return c, fmt.Errorf("clean stale %s: %w", fuseDir, err)
	} else if live {
		return c, fmt.Errorf("clean stale %s: a live FUSE server serves it: %w", fuseDir, ErrBusy)
	}
	loops, err := loopBacking()
	if err != nil {
		return c, fmt.Errorf("clean stale %s: %w", fuseDir, err)
	}
	mi, err := readMountInfo()
	if err != nil {
		return c, fmt.Errorf("clean stale %s: %w", fuseDir, err)
	}
	nums := make([]int, 0, len(loops))
	for n, file := range loops {
		if strings.HasPrefix(file, fuseDir+"/") {
			nums = append(nums, n)
		}
	}
	slices.Sort(nums)
	var errs []error
	for _, n := range nums {
		if err := ctx.Err(); err != nil {
			return c, err
		}
		path := "/dev/loop" + strconv.Itoa(n)
		// Deepest mount points first, in case one is mounted inside another.
		var mps []string
		// The device number from sysfs: loopN's minor is N only while
		// the loop driver has no partitions (max_part=0).
		if major, minor, ok := loopDevNum(n); ok {
			for _, m := range mi {
				if m.major == major && m.minor == minor {
					mps = append(mps, m.mountPoint)
				}
			}
		}
		slices.SortFunc(mps, func(a, b string) int { return len(b) - len(a) })
		for _, mp := range mps {
			log.Warn("unmounting a filesystem on a stale loop device", "device", path, "mount", mp)
			if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !isNotMounted(err) {
				errs = append(errs, fmt.Errorf("clean stale: unmount %s (on %s): %w", mp, path, err))
				continue
			}
			c.Unmounted = append(c.Unmounted, mp)
		}
		log.Warn("detaching a stale loop device", "device", path, "file", loops[n])
		if err := clearLoop(path); err != nil {
			errs = append(errs, fmt.Errorf("clean stale: %w", err))
			continue
		}
		c.Detached = append(c.Detached, path)
	}
	return c, errors.Join(errs...)
}

// loopDevNum returns the device number of /dev/loopN from sysfs.
func loopDevNum(n int) (major, minor uint32, ok bool) {
	maj, mnr, found := strings.Cut(readSysfs(fmt.Sprintf("/sys/block/loop%d/dev", n)), ":")
	a, err1 := strconv.ParseUint(maj, 10, 32)
	b, err2 := strconv.ParseUint(mnr, 10, 32)
	if !found || err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return uint32(a), uint32(b), true
}

// liveFUSE reports whether dir is the mount point of a FUSE filesystem
// whose server answers.
func liveFUSE(dir string) (bool, error) {
	// statfs always reaches the server (stat may be answered from the
	// kernel's attribute cache), so a dead one answers ENOTCONN.
	var sfs unix.Statfs_t
	err := unix.Statfs(dir, &sfs)
	if errors.Is(err, unix.ENOTCONN) || errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if sfs.Type != fuseSuperMagic {
		return false, nil
	}
	var st, parent unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return false, err
	}
	if err := unix.Stat(filepath.Dir(dir), &parent); err != nil {
		return false, err
	}
	return parent.Dev != st.Dev, nil
}

// clearLoop detaches /dev/loopN. With AUTOCLEAR set and another opener
// left, the kernel finishes when that opener closes.
func clearLoop(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("detach %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detach %s: LOOP_CLR_FD: %w", path, err)
	}
	return nil
}
