package backupd

import "golang.org/x/sys/unix"

// startWriteback asks the kernel to start writing [off, off+n) of the file
// back now (sync_file_range SYNC_FILE_RANGE_WRITE: asynchronous, no
// durability promise), so the fsync of Flush finds less to write. Restore
// calls it for each finished window. Errors are ignored: it is a hint.
func (d FileDestination) startWriteback(off, n int64) {
	rc, err := d.F.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE)
	})
}
