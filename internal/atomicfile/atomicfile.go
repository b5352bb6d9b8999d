package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// TmpSuffix is appended to the target's name for the temporary file; a
// crash can leave one behind, which the next Write replaces.
const TmpSuffix = ".tmp"

// ErrUncertain marks a Write that failed after its rename: path holds the
// new content now, but the directory sync failed, so after a crash it may
// hold the old content or the new. A caller that keeps state derived from
// the file must treat both as possible until it reads the file again.
var ErrUncertain = errors.New("renamed but the directory sync failed: old or new content after a crash")

// Write replaces path with b (mode 0600): path+TmpSuffix is written and
// fdatasynced, renamed over path, and the directory is synced. On a failure
// before the rename the temporary file is removed and path is unchanged; a
// failure of the directory sync after it wraps ErrUncertain.
func Write(path string, b []byte) error {
	tmp := path + TmpSuffix
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = unix.Fdatasync(int(f.Fd()))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("%s: %w: %w", path, ErrUncertain, err)
	}
	return nil
}

// Remove removes path and syncs its directory, so that the removal
// survives a crash; a path that does not exist is not an error.
func Remove(path string) error {
	err := os.Remove(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	return err
}

// syncDir is SyncDir, replaceable by tests to inject failures.
var syncDir = SyncDir

// SyncDir makes the entries of dir (creations, renames, removals) durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}
