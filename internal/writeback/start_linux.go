package writeback

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Start asks the kernel to start writing n bytes of f at off to storage
// without waiting for them. A filesystem or file that does not support it
// is no error; other failures (EIO, a closed file) are returned, and a
// caller that only hints may ignore them.
func Start(f *os.File, off, n int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE)
	}); err != nil {
		return err
	}
	if serr == nil || errors.Is(serr, unix.ENOSYS) || errors.Is(serr, unix.EINVAL) || errors.Is(serr, unix.EOPNOTSUPP) || errors.Is(serr, unix.ESPIPE) {
		return nil
	}
	return fmt.Errorf("starting writeback: %w", serr)
}
