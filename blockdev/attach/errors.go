package attach

import "errors"

var (
	// ErrBusy is returned by Loop.Detach and NBD.Detach while a filesystem
	// on the device is mounted, and by CleanStale when a live server still
	// serves the FUSE mount it was asked to clean.
	ErrBusy = errors.New("device busy")
	// ErrNoKernelNBD is returned by AttachNBD when the kernel has no NBD
	// driver (nbd.ko is neither loaded nor loadable).
	ErrNoKernelNBD = errors.New("kernel NBD driver unavailable")
	// ErrNoFreeDevice is returned when no free loop or NBD device could
	// be claimed.
	ErrNoFreeDevice = errors.New("no free device")
	// ErrUnsupportedFS is returned by Mkfs for a filesystem type other
	// than ext4 and xfs.
	ErrUnsupportedFS = errors.New("unsupported filesystem type")
)
