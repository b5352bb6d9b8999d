package attach

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// LoopOptions configures a loop device. The zero value is the measured
// default: read-write, 4096-byte logical blocks, direct I/O to the file.
type LoopOptions struct {
	// ReadOnly attaches the device read-only (LO_FLAGS_READ_ONLY), as for
	// snapshot files, and opens the file read-only.
	ReadOnly bool
	// Buffered turns LO_FLAGS_DIRECT_IO off. With direct I/O (the default)
	// the loop driver submits the block layer's requests to the file as
	// asynchronous direct I/O, many at once; without it, each request is
	// a synchronous buffered read or write by a loop worker. Direct I/O
	// measured faster on the FUSE file at every queue depth (see
	// benchmarks/RESULTS.md "FUSE (issue 4)") and avoids caching the data
	// twice (block device cache above, file page cache below).
	Buffered bool
	// BlockSize is the device's logical block size; 0 means 4096, the
	// volumes' copy-on-write unit, so no request is smaller than a block
	// and none needs a read-modify-write in the store.
	BlockSize uint32
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
}

// Loop is an attached loop device. Its methods are safe for concurrent
// use.
type Loop struct {
	// Path is the device node, "/dev/loopN".
	Path string
	// Number is N.
	Number int
	// File is the backing file.
	File string
	// DirectIO reports whether the kernel accepted direct I/O.
	DirectIO bool

	log  *slog.Logger
	mu   sync.Mutex
	dev  *os.File // held open: with LO_FLAGS_AUTOCLEAR, closing the last opener detaches
	done bool
}

// AttachLoop attaches file as a free loop device with LOOP_CONFIGURE and
// LO_FLAGS_AUTOCLEAR: if this process dies, the kernel detaches the device
// as soon as nothing else (a mounted filesystem) holds it open. The device
// stays attached until Detach.
func AttachLoop(ctx context.Context, file string, opts *LoopOptions) (*Loop, error) {
	if opts == nil {
		opts = &LoopOptions{}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mode := os.O_RDWR
	flags := uint32(unix.LO_FLAGS_AUTOCLEAR)
	if opts.ReadOnly {
		mode = os.O_RDONLY
		flags |= unix.LO_FLAGS_READ_ONLY
	}
	if !opts.Buffered {
		flags |= unix.LO_FLAGS_DIRECT_IO
	}
	bs := opts.BlockSize
	if bs == 0 {
		bs = 4096
	}
	backing, err := os.OpenFile(file, mode|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop attach %s: %w", file, err)
	}
	defer backing.Close() // the loop driver keeps its own reference
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop attach %s: %w", file, err)
	}
	defer ctl.Close()
	// Another process may claim the device LOOP_CTL_GET_FREE returned
	// before we configure it (EBUSY): ask again.
	for range 64 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("loop attach %s: LOOP_CTL_GET_FREE: %w", file, err)
		}
		path := "/dev/loop" + strconv.Itoa(n)
		dev, err := openLoopNode(path, n, mode)
		if err != nil {
			return nil, fmt.Errorf("loop attach %s: %w", file, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(backing.Fd()), Size: bs}
		cfg.Info.Flags = flags
		copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], file)
		err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
		if errors.Is(err, unix.EBUSY) {
			dev.Close()
			continue
		}
		if err != nil {
			dev.Close()
			return nil, fmt.Errorf("loop attach %s to %s: LOOP_CONFIGURE: %w", file, path, err)
		}
		l := &Loop{Path: path, Number: n, File: file, dev: dev, log: log.With("device", path)}
		l.DirectIO = readSysfs(fmt.Sprintf("/sys/block/loop%d/loop/dio", n)) == "1"
		if !opts.Buffered && !l.DirectIO {
			log.Warn("loop device refused direct I/O; using buffered I/O", "device", path, "file", file)
		}
		l.log.Info("loop attached", "file", file, "readonly", opts.ReadOnly, "dio", l.DirectIO, "block_size", bs)
		return l, nil
	}
	return nil, fmt.Errorf("loop attach %s: every free device was taken concurrently: %w", file, ErrNoFreeDevice)
}

// openLoopNode opens /dev/loopN, creating the node when no devtmpfs or
// udev made it.
func openLoopNode(path string, n, mode int) (*os.File, error) {
	f, err := os.OpenFile(path, mode|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		if err := unix.Mknod(path, unix.S_IFBLK|0o600, int(unix.Mkdev(7, uint32(n)))); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("mknod %s: %w", path, err)
		}
		f, err = os.OpenFile(path, mode|unix.O_CLOEXEC, 0)
	}
	return f, err
}

func readSysfs(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Detach detaches the device (LOOP_CLR_FD). It fails with ErrBusy while a
// filesystem on it is mounted. If another process still has the device
// open, the kernel detaches it when that process closes it. Detach is
// idempotent.
func (l *Loop) Detach(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return nil
	}
	if err := refuseMounted(l.dev); err != nil {
		return fmt.Errorf("loop detach %s: %w", l.Path, err)
	}
	if err := unix.IoctlSetInt(int(l.dev.Fd()), unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("loop detach %s: LOOP_CLR_FD: %w", l.Path, err)
	}
	l.done = true
	if err := l.dev.Close(); err != nil {
		return fmt.Errorf("loop detach %s: %w", l.Path, err)
	}
	l.log.Info("loop detached", "file", l.File)
	return nil
}

// UpdateSize makes the device take its backing file's current size
// (LOOP_SET_CAPACITY), after the volume grew. A filesystem on the device
// sees the new size at once and can then be grown (resize2fs,
// xfs_growfs).
func (l *Loop) UpdateSize(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return fmt.Errorf("loop %s: detached: %w", l.Path, os.ErrClosed)
	}
	if err := unix.IoctlSetInt(int(l.dev.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("loop %s: LOOP_SET_CAPACITY: %w", l.Path, err)
	}
	return nil
}

// loopBacking lists attached loop devices and their backing files.
func loopBacking() (map[int]string, error) {
	paths, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return nil, err
	}
	out := make(map[int]string, len(paths))
	for _, p := range paths {
		name := filepath.Base(filepath.Dir(filepath.Dir(p)))
		n, err := strconv.Atoi(strings.TrimPrefix(name, "loop"))
		if err != nil {
			continue
		}
		if b := readSysfs(p); b != "" {
			out[n] = b
		}
	}
	return out, nil
}

// BackingFile returns the file loop device /dev/loopN is attached to, or
// "" when it is free.
func BackingFile(n int) string {
	return readSysfs(fmt.Sprintf("/sys/block/loop%d/loop/backing_file", n))
}
