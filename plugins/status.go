package plugins

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errNotConfigured is returned by the server shim before Configure.
var errNotConfigured = fmt.Errorf("plugin not configured: Configure must come first (%w)", ErrPermanent)

// toStatus maps a target error to the gRPC status the server shim returns,
// keeping its text. The most specific sentinel wins.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	var code codes.Code
	switch {
	case errors.Is(err, ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, ErrAlreadyExists):
		code = codes.AlreadyExists
	case errors.Is(err, ErrInvalidKey):
		code = codes.InvalidArgument
	case errors.Is(err, ErrInvalidRange):
		code = codes.OutOfRange
	case errors.Is(err, ErrUnsupported):
		code = codes.Unimplemented
	case errors.Is(err, ErrClosed), errors.Is(err, errNotConfigured):
		code = codes.FailedPrecondition
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, ErrTransient):
		code = codes.Unavailable
	default:
		code = codes.Unknown
	}
	return status.Error(code, err.Error())
}

// fromStatus maps an error from a gRPC call back to the target error
// classes. A status the server shim produced keeps its text; a failure of
// the connection itself (the plugin died, the stream broke) is transient.
// When ctx has ended, its error is returned (wrapped) instead: the caller
// gave up, the plugin did not fail.
func fromStatus(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("plugin %s: %w", op, context.Cause(ctx))
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("plugin %s: %w", op, Transient(err))
	}
	var class error
	switch st.Code() {
	case codes.NotFound:
		class = ErrNotFound
	case codes.AlreadyExists:
		class = ErrAlreadyExists
	case codes.InvalidArgument:
		class = ErrInvalidKey
	case codes.OutOfRange:
		class = ErrInvalidRange
	case codes.Unimplemented:
		class = ErrUnsupported
	case codes.Unavailable, codes.Aborted, codes.Internal:
		// Internal is what gRPC reports for a stream cut mid-message.
		class = ErrTransient
	case codes.Canceled, codes.DeadlineExceeded:
		// The plugin's own context ended without ours: the plugin is
		// going away, so this is a transport failure.
		class = ErrTransient
	default:
		class = ErrPermanent
	}
	return remoteError{op: op, msg: st.Message(), class: class}
}

// remoteError is an error that crossed the plugin boundary: the plugin's
// text and the class sentinel it carried.
type remoteError struct {
	op    string
	msg   string
	class error
}

func (e remoteError) Error() string { return "plugin " + e.op + ": " + e.msg }
func (e remoteError) Unwrap() error { return e.class }
