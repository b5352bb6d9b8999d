//go:build !linux

package backupd

import (
	"errors"
	"fmt"
	"os"
)

// startWriteback is a no-op where sync_file_range does not exist.
func (d FileDestination) startWriteback(off, n int64) {}

// OpenDirect is not supported here: FileDestination writes through F.
func OpenDirect(path string) (*os.File, error) {
	return nil, fmt.Errorf("open %s with O_DIRECT: %w", path, errors.ErrUnsupported)
}
