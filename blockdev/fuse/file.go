package fuse

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/strata-block/strata/blockdev"
)

// rootNode is the mount's directory. Its children are persistent inodes
// added and removed by FS.Add and FS.Remove; go-fuse serves lookup and
// readdir from them.
type rootNode struct {
	fs.Inode
	fsys *FS
}

var _ = (fs.NodeGetattrer)((*rootNode)(nil))

func (r *rootNode) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o755
	out.Nlink = 2
	return 0
}

// fileNode is one device's file.
type fileNode struct {
	fs.Inode
	fsys *FS
	vol  blockdev.Volume
	name string
	// added is when the file appeared in the mount: the times of a
	// read-only (snapshot) file, whose content never changes.
	added time.Time

	written atomic.Bool // some write, zero or trim went through the mount

	// Guarded by fsys.mu.
	open     int
	removed  bool
	onClosed func() // set by Detach: runs when the last handle is released
}

var (
	_ = (fs.NodeOpener)((*fileNode)(nil))
	_ = (fs.NodeGetattrer)((*fileNode)(nil))
	_ = (fs.NodeSetattrer)((*fileNode)(nil))
)

func (n *fileNode) fillAttr(out *fuse.Attr) {
	mode := uint32(0o644)
	if n.vol.ReadOnly() {
		mode = 0o444
	}
	size := uint64(n.vol.Size())
	// A writable volume's content changes through any frontend, NBD
	// included, which the mount does not see: its times are always now,
	// so a tool that skips files whose time has not moved (rsync, backup
	// programs) never takes it as unchanged. A snapshot's never change.
	t := n.added
	if !n.vol.ReadOnly() {
		t = time.Now()
	}
	out.SetTimes(&t, &t, &t)
	out.Mode = syscall.S_IFREG | mode
	out.Nlink = 1
	out.Size = size
	out.Blocks = (size + 511) / 512
	out.Blksize = 4096
}

// Getattr reports the device's size and mode.
func (n *fileNode) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fillAttr(&out.Attr)
	return 0
}

// Setattr accepts everything but a size change (EPERM: the size is the
// volume's) so that tools touching times or modes keep working.
func (n *fileNode) Setattr(_ context.Context, _ fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok && int64(size) != n.vol.Size() {
		return syscall.EPERM
	}
	n.fillAttr(&out.Attr)
	return 0
}

// Open returns a handle; see defaultMountOptions for the open flags.
func (n *fileNode) Open(_ context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if n.vol.ReadOnly() && flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EROFS
	}
	f := n.fsys
	f.mu.Lock()
	if n.removed || f.closed {
		f.mu.Unlock()
		return nil, 0, syscall.ENOENT
	}
	n.open++
	f.mu.Unlock()
	h := &handle{node: n, sync: flags&syscall.O_DSYNC != 0}
	var fuseFlags uint32
	if !f.opts.PageCache {
		fuseFlags = fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES
	}
	return h, fuseFlags, 0
}

// handle is an open file.
type handle struct {
	node *fileNode
	// sync: opened with O_SYNC or O_DSYNC, so fallocate is FUA as well.
	// Writes are made durable by syncWrites, which also sees a write's
	// own RWF_DSYNC.
	sync  bool
	dirty atomic.Bool // written since the last flush through this handle
}

var (
	_ = (fs.FileReader)((*handle)(nil))
	_ = (fs.FileWriter)((*handle)(nil))
	_ = (fs.FileFsyncer)((*handle)(nil))
	_ = (fs.FileFlusher)((*handle)(nil))
	_ = (fs.FileReleaser)((*handle)(nil))
	_ = (fs.FileAllocater)((*handle)(nil))
)

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	vol := h.node.vol
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if off >= vol.Size() {
		return fuse.ReadResultData(nil), 0
	}
	n, err := vol.ReadAt(ctx, dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, h.errno("read", err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *handle) writeFlags() blockdev.WriteFlags {
	if h.sync {
		return blockdev.FUA
	}
	return 0
}

// wrote records a change made through the handle.
func (h *handle) wrote() {
	h.dirty.Store(true)
	h.node.written.Store(true)
}

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	vol := h.node.vol
	if vol.ReadOnly() {
		return 0, syscall.EROFS
	}
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if off+int64(len(data)) > vol.Size() {
		return 0, syscall.EFBIG
	}
	h.wrote()
	n, err := vol.WriteAt(ctx, data, off, 0)
	if err != nil {
		return uint32(n), h.errno("write", err)
	}
	return uint32(n), 0
}

// Fsync makes every write to the device durable (Volume.Flush).
func (h *handle) Fsync(ctx context.Context, _ uint32) syscall.Errno {
	h.dirty.Store(false)
	if err := h.node.vol.Flush(ctx); err != nil {
		h.dirty.Store(true)
		return h.errno("fsync", err)
	}
	return 0
}

// Flush runs on every close(2) of a descriptor: a handle that wrote
// flushes the device, so close reports a failed flush.
func (h *handle) Flush(ctx context.Context) syscall.Errno {
	if !h.dirty.Swap(false) {
		return 0
	}
	if err := h.node.vol.Flush(ctx); err != nil {
		h.dirty.Store(true)
		return h.errno("flush", err)
	}
	return 0
}

func (h *handle) Release(context.Context) syscall.Errno {
	f := h.node.fsys
	f.mu.Lock()
	n := h.node
	n.open--
	if n.open == 0 {
		f.released.Broadcast()
	}
	var done func()
	if n.open == 0 && n.onClosed != nil {
		done, n.onClosed = n.onClosed, nil
		delete(f.detached, n)
	}
	f.mu.Unlock()
	if done != nil {
		f.log.Info("detached file closed", "volume", n.name)
		done()
	}
	return 0
}

// Allocate maps fallocate(2): PUNCH_HOLE|KEEP_SIZE to Trim, ZERO_RANGE to
// Zero; other modes are EOPNOTSUPP. Ranges past the end are clipped when
// the size is kept, EFBIG otherwise.
func (h *handle) Allocate(ctx context.Context, off, length uint64, mode uint32) syscall.Errno {
	const (
		punch = 0x02 // FALLOC_FL_PUNCH_HOLE
		keep  = 0x01 // FALLOC_FL_KEEP_SIZE
		zero  = 0x10 // FALLOC_FL_ZERO_RANGE
	)
	vol := h.node.vol
	var op func(context.Context, int64, int64, blockdev.WriteFlags) error
	var name string
	switch mode {
	case punch | keep:
		op, name = vol.Trim, "punch hole"
	case zero, zero | keep:
		op, name = vol.Zero, "zero range"
	default:
		return syscall.EOPNOTSUPP
	}
	if vol.ReadOnly() {
		return syscall.EROFS
	}
	size := uint64(vol.Size())
	end := off + length
	if end < off {
		return syscall.EINVAL
	}
	if end > size {
		if mode&keep == 0 {
			return syscall.EFBIG
		}
		end = size
	}
	if off >= end {
		return 0
	}
	h.wrote()
	if err := op(ctx, int64(off), int64(end-off), h.writeFlags()); err != nil {
		return h.errno(name, err)
	}
	return 0
}

// errno maps a device error to the errno the caller sees (see the package
// documentation) and logs the ones that mean the device failed.
func (h *handle) errno(op string, err error) syscall.Errno {
	switch {
	case errors.Is(err, blockdev.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, blockdev.ErrOutOfRange):
		return syscall.EFBIG
	case errors.Is(err, blockdev.ErrInvalidArgument):
		return syscall.EINVAL
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return syscall.EINTR
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		h.node.fsys.log.Warn("device out of space", "volume", h.node.name, "op", op, "err", err)
		return syscall.ENOSPC
	}
	h.node.fsys.log.Error("device failed", "volume", h.node.name, "op", op, "err", err)
	return syscall.EIO
}
