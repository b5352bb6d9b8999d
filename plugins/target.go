package plugins

import (
	"context"
	"fmt"
	"io"
	"iter"
)

// Target is a backup target: a flat store of immutable-by-convention
// objects addressed by key.
//
// Vocabulary. A key names one object; its grammar is in ValidateKey. An
// object is a byte string of known length. A prefix selects the keys that
// begin with it (ValidatePrefix). "Visible" means returned by Get, Has or
// List.
//
// Contract, for every implementation (plugins/targettest checks it):
//
//   - Put stores exactly size bytes read from r under key, replacing any
//     object there. It is atomic: a reader sees the whole new object, the
//     whole old one, or (for a new key) none — never a prefix. If r fails,
//     yields fewer or more than size bytes, or ctx ends before Put returns,
//     nothing becomes visible and Put returns an error. Put is idempotent:
//     repeating it with the same content leaves the same state, which is
//     what makes it safe to retry.
//   - PutIfAbsent is Put that succeeds only when no object exists under key;
//     otherwise it returns ErrAlreadyExists and changes nothing. With
//     Info().ConditionalCreate == ConditionalCreateAtomic, of concurrent
//     PutIfAbsent calls for one key exactly one succeeds. A target that
//     cannot provide that returns ErrUnsupported (or reports a weaker mode,
//     see ConditionalCreate).
//   - Get returns a reader over length bytes of the object from offset
//     (length < 0: to the end) and the number of bytes it will yield. A
//     range past the end is clipped to it; a negative offset or one past
//     the object's size is ErrInvalidRange. A missing key is ErrNotFound.
//     The reader fails (never silently truncates) if the object cannot be
//     read to the end of the range. The caller closes it.
//   - Has reports, for each key in order, whether an object exists. Batches
//     are at most Info().MaxBatch keys.
//   - List yields the objects whose keys begin with prefix, in ascending
//     byte order of key, each strictly after startAfter (if not empty). It
//     stops at the first error, yielding it. Breaking out of the loop
//     releases the listing.
//   - Delete removes the objects; a key that does not exist is not an
//     error. Batches are at most Info().MaxBatch keys.
//   - Close releases the target; it is idempotent. Calls after Close fail.
//
// Every key is validated with ValidateKey before anything else happens; an
// invalid key is ErrInvalidKey. Errors are classified by the sentinels in
// errors.go and keep their class across the plugin boundary. Every method
// may be called concurrently.
type Target interface {
	Info(ctx context.Context) (Info, error)
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error
	Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, int64, error)
	Has(ctx context.Context, keys []string) ([]bool, error)
	List(ctx context.Context, prefix, startAfter string) iter.Seq2[ObjectInfo, error]
	Delete(ctx context.Context, keys []string) error
	Close() error
}

// ObjectInfo describes one stored object, as List yields it.
type ObjectInfo struct {
	Key  string
	Size int64
}

// Info describes a target's kind, capabilities and limits.
type Info struct {
	// Kind names the implementation ("fs", "s3", or an external plugin's
	// name).
	Kind string
	// ConditionalCreate says what PutIfAbsent guarantees.
	ConditionalCreate ConditionalCreate
	// MaxObjectSize is the largest object Put accepts, in bytes.
	MaxObjectSize int64
	// MaxBatch is the most keys one Has or Delete call accepts.
	MaxBatch int
}

// ConditionalCreate says what a target's PutIfAbsent guarantees. The zero
// value is ConditionalCreateUnknown.
type ConditionalCreate int

const (
	// ConditionalCreateUnknown is the zero value: not reported.
	ConditionalCreateUnknown ConditionalCreate = iota
	// ConditionalCreateAtomic: of concurrent PutIfAbsent calls for one key,
	// exactly one succeeds (fs: link(2); s3: If-None-Match: *).
	ConditionalCreateAtomic
	// ConditionalCreateCheckThenPut: PutIfAbsent checks for the key and
	// then writes; two concurrent creators can both succeed, the later
	// object replacing the earlier. Callers must fence (e.g. a token
	// inside the object read back after writing) rather than rely on it.
	// Only an S3 target on a server without conditional writes, opted in
	// explicitly, reports it.
	ConditionalCreateCheckThenPut
	// ConditionalCreateNone: PutIfAbsent returns ErrUnsupported.
	ConditionalCreateNone
)

var conditionalCreateNames = [...]string{
	ConditionalCreateUnknown:      "unknown",
	ConditionalCreateAtomic:       "atomic",
	ConditionalCreateCheckThenPut: "check-then-put",
	ConditionalCreateNone:         "none",
}

// String returns the mode's name as ParseConditionalCreate accepts it.
func (c ConditionalCreate) String() string {
	if c < 0 || int(c) >= len(conditionalCreateNames) {
		return fmt.Sprintf("ConditionalCreate(%d)", int(c))
	}
	return conditionalCreateNames[c]
}

// ParseConditionalCreate parses a mode name as String returns it.
func ParseConditionalCreate(s string) (ConditionalCreate, error) {
	for i, n := range conditionalCreateNames {
		if n == s {
			return ConditionalCreate(i), nil
		}
	}
	return ConditionalCreateUnknown, fmt.Errorf("conditional-create mode %q: want one of atomic, check-then-put, none: %w", s, ErrPermanent)
}

// Limits every target shares; targets may report smaller ones in Info.
const (
	// MaxKeyLength is the longest key in bytes (the S3 limit).
	MaxKeyLength = 1024
	// MaxSegmentLength is the longest "/"-separated key segment in bytes
	// (NAME_MAX on common filesystems).
	MaxSegmentLength = 255
	// MaxBatch is the most keys one Has or Delete carries over the plugin
	// protocol; the client shim splits larger batches.
	MaxBatch = 500
	// MaxMessageSize bounds every protocol message; payloads travel in
	// chunks of ChunkSize.
	MaxMessageSize = 1 << 20
	// ChunkSize is the payload carried by one Put or Get message, leaving
	// room for framing within MaxMessageSize.
	ChunkSize = MaxMessageSize - 1024
)

// OpenFunc opens a target from its URL and credentials. Built-in and
// external plugins serve one (see Serve); the manager calls it in the
// plugin process with the target configuration.
type OpenFunc func(ctx context.Context, url string, creds Credentials) (Target, error)
