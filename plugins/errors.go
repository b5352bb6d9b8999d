package plugins

import (
	"context"
	"errors"
	"fmt"
	"syscall"
)

// Error classes. Every error a Target returns wraps exactly one of
// ErrNotFound, ErrAlreadyExists, ErrTransient or ErrPermanent (directly or
// through a more specific sentinel below); Classify names it. The class
// survives the plugin boundary: the server shim maps it to a gRPC status
// code and the client shim maps the code back, so errors.Is works on the
// host as it does in the plugin.
var (
	// ErrNotFound is returned by Get when no object exists under the key.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists is returned by PutIfAbsent when an object already
	// exists under the key.
	ErrAlreadyExists = errors.New("already exists")
	// ErrTransient is wrapped by errors that may go away on their own: a
	// timeout, a throttling reply, a connection reset, a plugin that died.
	// Idempotent calls are retried on it (see Manager).
	ErrTransient = errors.New("transient error")
	// ErrPermanent is wrapped by errors that retrying will not fix: bad
	// input, denied access, a full disk, an unsupported operation.
	ErrPermanent = errors.New("permanent error")
)

// Specific permanent errors; each wraps ErrPermanent.
var (
	// ErrInvalidKey is returned for a key or prefix that breaks the grammar
	// of ValidateKey, before anything else happens.
	ErrInvalidKey = fmt.Errorf("invalid key (%w)", ErrPermanent)
	// ErrInvalidRange is returned by Get for an offset past the end of the
	// object or a negative offset.
	ErrInvalidRange = fmt.Errorf("invalid range (%w)", ErrPermanent)
	// ErrUnsupported is returned by an operation the target does not
	// provide (PutIfAbsent on a target whose Info reports
	// ConditionalCreateNone).
	ErrUnsupported = fmt.Errorf("unsupported (%w)", ErrPermanent)
	// ErrClosed is returned by calls on a closed target.
	ErrClosed = fmt.Errorf("target closed (%w)", ErrPermanent)
)

// Class is an error's class. The zero value is ClassNone (no error).
type Class int

// Error classes, as Classify returns them.
const (
	ClassNone Class = iota
	ClassNotFound
	ClassAlreadyExists
	ClassTransient
	ClassPermanent
)

// String returns the class name.
func (c Class) String() string {
	switch c {
	case ClassNone:
		return "none"
	case ClassNotFound:
		return "not-found"
	case ClassAlreadyExists:
		return "already-exists"
	case ClassTransient:
		return "transient"
	case ClassPermanent:
		return "permanent"
	}
	return fmt.Sprintf("Class(%d)", int(c))
}

// Classify returns err's class. An error that wraps none of the class
// sentinels is permanent: retrying an error nobody classified could repeat
// a failure forever. A context's cancellation or deadline is permanent too
// (the caller gave up; retrying would ignore that).
func Classify(err error) Class {
	switch {
	case err == nil:
		return ClassNone
	case errors.Is(err, ErrNotFound):
		return ClassNotFound
	case errors.Is(err, ErrAlreadyExists):
		return ClassAlreadyExists
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return ClassPermanent
	case errors.Is(err, ErrTransient):
		return ClassTransient
	}
	return ClassPermanent
}

// Transient wraps err as ErrTransient, keeping err's own chain:
// errors.Is(Transient(err), ErrTransient) and errors.Is(..., err) both
// hold. It returns nil for nil.
func Transient(err error) error {
	if err == nil {
		return nil
	}
	return classed{err: err, class: ErrTransient}
}

// Permanent wraps err as ErrPermanent like Transient does.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return classed{err: err, class: ErrPermanent}
}

// classed attaches a class sentinel to an error without changing its text.
type classed struct {
	err   error
	class error
}

func (c classed) Error() string   { return c.err.Error() }
func (c classed) Unwrap() []error { return []error{c.err, c.class} }

// FileError gives an error of a local filesystem its class: interrupted
// calls, timeouts and stale NFS handles may pass (transient); out of
// space, quota, permission, a read-only filesystem and the rest are
// permanent until someone acts. The fs target classes its errors so, and
// so does the host writing an object's file through a descriptor
// (fileplane.go).
func FileError(err error) error {
	switch {
	case errors.Is(err, syscall.EINTR), errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.ETIMEDOUT),
		errors.Is(err, syscall.ESTALE):
		return Transient(err)
	}
	return Permanent(err)
}
