package plugins

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// SizedReader returns a reader that yields exactly what r yields while
// checking that it is size bytes: it fails with an error wrapping
// io.ErrUnexpectedEOF if r ends early, fails if r has more, and returns
// io.EOF only after r itself has. Targets read a Put's data through it and
// commit only after io.EOF, which is how "fewer or more than size bytes
// stores nothing" holds even across the plugin boundary (the server shim's
// reader reaches io.EOF only when the host commits).
//
// A nil r reads as empty, so Put(ctx, key, nil, 0) stores an empty object.
func SizedReader(r io.Reader, size int64) io.Reader {
	if r == nil {
		r = eofReader{}
	}
	return &sizedReader{r: r, size: size, remaining: size}
}

type sizedReader struct {
	r         io.Reader
	size      int64
	remaining int64
	err       error
}

func (s *sizedReader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.remaining == 0 {
		// Everything arrived: only the source's own end may follow.
		var one [1]byte
		for {
			n, err := s.r.Read(one[:])
			if n > 0 {
				s.err = fmt.Errorf("put data is longer than its size %d: %w", s.size, ErrPermanent)
				return 0, s.err
			}
			if err != nil {
				s.err = err
				return 0, err
			}
		}
	}
	if int64(len(p)) > s.remaining {
		p = p[:s.remaining]
	}
	n, err := s.r.Read(p)
	s.remaining -= int64(n)
	if errors.Is(err, io.EOF) && s.remaining > 0 {
		s.err = fmt.Errorf("put data ended after %d of %d bytes: %w", s.size-s.remaining, s.size, io.ErrUnexpectedEOF)
		return n, s.err
	}
	if err != nil && !errors.Is(err, io.EOF) {
		s.err = err
	}
	return n, err
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// FileSection reads n bytes of a file from an offset, failing rather than
// ending early if the file is shorter than that (an object's file never
// should be: objects are replaced by rename, not rewritten). It is the Get
// reader of a target whose objects are local files (fs), and the host's
// reader of a descriptor such a target's plugin passed (fileplane.go): the
// same reads either way. It is a FileRangeReader.
type FileSection struct {
	f         *os.File
	key       string
	off       int64 // of the next byte
	remaining int64
}

var _ FileRangeReader = (*FileSection)(nil)

// NewFileSection returns a reader of f's n bytes from off, for the object
// key (named in errors); closing it closes f.
func NewFileSection(f *os.File, key string, off, n int64) *FileSection {
	return &FileSection{f: f, key: key, off: off, remaining: n}
}

// FileRange returns the file and the part of the range not read yet.
func (s *FileSection) FileRange() (*os.File, int64, int64) { return s.f, s.off, s.remaining }

func (s *FileSection) Read(p []byte) (int, error) {
	if s.remaining == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > s.remaining {
		p = p[:s.remaining]
	}
	n, err := s.f.ReadAt(p, s.off)
	s.off += int64(n)
	s.remaining -= int64(n)
	switch {
	case errors.Is(err, io.EOF) && s.remaining > 0:
		return n, fmt.Errorf("get %q: file ended %d bytes early: %w", s.key, s.remaining, Transient(io.ErrUnexpectedEOF))
	case errors.Is(err, io.EOF), err == nil:
		return n, nil
	}
	return n, fmt.Errorf("get %q: %w", s.key, FileError(err))
}

// Close closes the file.
func (s *FileSection) Close() error { return s.f.Close() }

// ContextReader returns a reader of r that fails with ctx's error once
// ctx has ended, checked before each read: a copy from a reader that
// never blocks for long (memory, a local file) then stops with its call.
func ContextReader(ctx context.Context, r io.Reader) io.Reader { return ctxReader{ctx, r} }

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
