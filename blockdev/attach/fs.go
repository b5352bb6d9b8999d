package attach

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

// Filesystem types Mkfs and Mount know.
const (
	Ext4 = "ext4"
	XFS  = "xfs"
)

// Mkfs formats dev with fstype (Ext4 or XFS), overwriting whatever is
// there (mkfs.ext4 -F, mkfs.xfs -f).
func Mkfs(ctx context.Context, dev, fstype string) error {
	var cmd *exec.Cmd
	switch fstype {
	case Ext4:
		cmd = exec.CommandContext(ctx, "mkfs.ext4", "-F", "-q", dev)
	case XFS:
		cmd = exec.CommandContext(ctx, "mkfs.xfs", "-f", "-q", dev)
	default:
		return fmt.Errorf("mkfs %s on %s: %w", fstype, dev, ErrUnsupportedFS)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs %s on %s: %w: %s", fstype, dev, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// MountOptions configures Mount.
type MountOptions struct {
	// ReadOnly mounts read-only (MS_RDONLY).
	ReadOnly bool
	// Data is the filesystem-specific option string ("noload",
	// "nouuid", ...).
	Data string
}

// Mount mounts the filesystem of type fstype on dev at dir (mount(2)).
func Mount(ctx context.Context, dev, dir, fstype string, opts *MountOptions) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if opts == nil {
		opts = &MountOptions{}
	}
	var flags uintptr
	if opts.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(dev, dir, fstype, flags, opts.Data); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", dev, fstype, dir, err)
	}
	return nil
}

// Unmount unmounts the filesystem at dir; it fails (EBUSY) while files on
// it are open.
func Unmount(ctx context.Context, dir string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// UMOUNT_NOFOLLOW: dir itself, never where a symlink there leads.
	if err := unix.Unmount(dir, unix.UMOUNT_NOFOLLOW); err != nil {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}

// FIFREEZE and FITHAW are _IOWR('X', 119, int) and _IOWR('X', 120, int).
const (
	fiFreeze = 0xc0045877
	fiThaw   = 0xc0045878
)

// Freeze flushes the filesystem mounted at dir and blocks new writes to it
// (FIFREEZE): ext4 and xfs checkpoint their journals, so a snapshot taken
// while frozen is a clean filesystem that mounts without recovery. Thaw
// must follow.
func Freeze(ctx context.Context, dir string) error {
	return fsIoctl(ctx, dir, fiFreeze, "freeze")
}

// Thaw ends Freeze.
func Thaw(ctx context.Context, dir string) error {
	return fsIoctl(ctx, dir, fiThaw, "thaw")
}

func fsIoctl(ctx context.Context, dir string, req uint, op string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("%s %s: %w", op, dir, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), req, 0); err != nil {
		return fmt.Errorf("%s %s: %w", op, dir, err)
	}
	return nil
}

// isNotMounted reports an unmount error meaning nothing was mounted.
func isNotMounted(err error) bool { return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) }
