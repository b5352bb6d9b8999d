package snapshot

import "errors"

var (
	// ErrNotFound is returned when a named volume or snapshot does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists is returned when creating a volume or snapshot whose name is taken.
	ErrExists = errors.New("already exists")
	// ErrInvalidName is returned for a volume or snapshot name outside
	// [a-z0-9][a-z0-9._-]{0,62}.
	ErrInvalidName = errors.New("invalid name")
	// ErrInvalidArgument is returned for a size, offset or length that is
	// negative, not aligned where alignment is required, or out of range.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrOutOfRange is returned by WriteAt, Zero and Trim for a range that
	// extends past the end of the volume. It wraps ErrInvalidArgument.
	ErrOutOfRange error = &childError{msg: "range past end of volume", parent: ErrInvalidArgument}
	// ErrCorrupt is returned when on-disk metadata or data fails a checksum
	// or validation; the error names the file and what is wrong.
	ErrCorrupt = errors.New("corrupt")
	// ErrClosed is returned by operations on a closed Store, Volume or View.
	ErrClosed = errors.New("closed")
	// ErrInUse is returned when opening a volume that is already open, deleting
	// an open volume, or opening a Store another process holds.
	ErrInUse = errors.New("in use")
	// ErrUnsupportedFormat is returned for metadata of an unknown format version.
	ErrUnsupportedFormat = errors.New("unsupported format version")
)

// childError is a sentinel that is also a more specific case of a parent
// sentinel, so errors.Is matches both.
type childError struct {
	msg    string
	parent error
}

func (e *childError) Error() string { return e.msg }
func (e *childError) Unwrap() error { return e.parent }
