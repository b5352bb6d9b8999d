package blockdev

import (
	"context"
	"errors"

	"github.com/strata-block/strata/snapshot"
)

// WriteFlags modify a write.
type WriteFlags uint8

const (
	// FUA (force unit access): the write is durable when the call returns,
	// as if a Flush covering it had returned.
	FUA WriteFlags = 1 << iota
)

// Extent is a byte range with one allocation kind (data, zero, hole).
type Extent = snapshot.Extent

// ExtentKind says what an Extent holds.
type ExtentKind = snapshot.ExtentKind

// Extent kinds.
const (
	ExtentData = snapshot.ExtentData
	ExtentZero = snapshot.ExtentZero
	ExtentHole = snapshot.ExtentHole
)

// Errors a Volume returns, for frontends to map onto their protocol
// (NBD: EINVAL, EPERM, ENOSPC, EIO). Check them with errors.Is.
var (
	// ErrInvalidArgument: a negative, oversized or out-of-range request.
	ErrInvalidArgument = snapshot.ErrInvalidArgument
	// ErrOutOfRange: a request past the end of the device; it also
	// matches ErrInvalidArgument.
	ErrOutOfRange = snapshot.ErrOutOfRange
	// ErrReadOnly: a write, zero or trim on a read-only device.
	ErrReadOnly = errors.New("read-only device")
	// ErrClosed: the device was closed.
	ErrClosed = snapshot.ErrClosed
)

// Volume is a block device: a volume's head or a read-only snapshot.
//
// Semantics: a write is visible to every later read on any caller
// (read-your-writes); it is durable once a Flush that starts after it
// returns, or at once with FUA. Zero and Trim make a range read as zeros
// (never as older data); Zero reports the range as allocated zeros, Trim as
// a hole. Reads past the end return io.EOF with the bytes before it, like
// io.ReaderAt; writes past the end fail with ErrOutOfRange and change
// nothing. A read-only device refuses writes with ErrReadOnly. Every
// method is safe for many concurrent callers. ctx is checked before the
// operation starts; an operation in progress runs to completion.
type Volume interface {
	// Name is the export name: "vol" or "vol@snap".
	Name() string
	// Size is the device size in bytes, a multiple of 4096.
	Size() int64
	// ReadOnly reports whether writes are refused.
	ReadOnly() bool
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	WriteAt(ctx context.Context, p []byte, off int64, flags WriteFlags) (int, error)
	Flush(ctx context.Context) error
	Zero(ctx context.Context, off, length int64, flags WriteFlags) error
	Trim(ctx context.Context, off, length int64, flags WriteFlags) error
	// Extents describes [off, off+length) clipped to the device.
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
}
