package fs

import (
	"errors"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing n bytes of fd at off to
// storage without waiting for them (sync_file_range SYNC_FILE_RANGE_WRITE),
// so the fsync that follows the last write finds most of the file already
// on its way. It is a hint: a filesystem that does not support it is
// ignored, and durability still comes from the fsync.
func startWriteback(fd uintptr, off, n int64) error {
	err := unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ESPIPE) {
		return nil
	}
	return err
}
