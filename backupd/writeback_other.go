//go:build !linux

package backupd

// startWriteback is a no-op where sync_file_range does not exist.
func (d FileDestination) startWriteback(off, n int64) {}
