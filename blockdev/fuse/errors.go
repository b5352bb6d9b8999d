package fuse

import "errors"

var (
	// ErrExists is returned by FS.Add for a name that is already in the
	// mount.
	ErrExists = errors.New("file already exists in the mount")
	// ErrNotFound is returned by FS.Remove for a name that is not in the
	// mount.
	ErrNotFound = errors.New("no such file in the mount")
	// ErrBusy is returned by FS.Remove while the file is open (a loop
	// device or a process holds it): detach it first.
	ErrBusy = errors.New("file is open")
	// ErrInvalidName is returned by FS.Add for a device name that is not
	// "vol" or "vol@snap" with both parts matching [a-z0-9][a-z0-9._-]{0,62}.
	ErrInvalidName = errors.New("invalid device name")
	// ErrMountPointBusy is returned by Mount when a live filesystem (one
	// that answers) is already mounted on the directory: another server
	// owns it.
	ErrMountPointBusy = errors.New("mount point already has a live mount")
	// ErrClosed is returned by FS.Add and FS.Remove after Close.
	ErrClosed = errors.New("fuse mount closed")
)
