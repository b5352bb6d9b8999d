package plugins

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	targetv1 "github.com/strata-block/strata/plugins/proto/v1"
)

// Payload transfers over the data plane: the host side (client shim) and
// the plugin side (server shim). doc.go describes the protocol.

// longAgo is a deadline in the past: setting it wakes a blocked pipe read
// or write when a call's context ends.
var longAgo = time.Unix(1, 0)

// onDone interrupts I/O on f when ctx ends; the returned stop undoes the
// arrangement (not the deadline).
func onDone(ctx context.Context, f *os.File) (stop func() bool) {
	return context.AfterFunc(ctx, func() { _ = f.SetDeadline(longAgo) })
}

// putPipe sends a Put's payload through a pipe: the read end goes to the
// plugin under a fresh token, the header names the token, the payload is
// written into the write end and the write end closed; only when all of
// it went in does the commit follow, so a plugin that got fewer or more
// bytes, or none, stores nothing. sctx is the stream's context, ctx the
// caller's.
func (c *client) putPipe(sctx, ctx context.Context, op, key string, r io.Reader, size int64, stream putClient, sendErr func(error) error) (err error) {
	pr, pw, err := newPipe()
	if err != nil {
		return err
	}
	tok := newToken()
	err = c.plane.send(sctx, tok, pr)
	_ = pr.Close() // the plugin has its own copy now
	if err != nil {
		_ = pw.Close()
		return fmt.Errorf("%s %q: %w", op, key, err)
	}
	defer func() {
		if err != nil {
			c.plane.forget(tok)
		}
	}()
	if err := stream.Send(&targetv1.PutRequest{Msg: &targetv1.PutRequest_Header{Header: &targetv1.PutHeader{Key: key, Size: size, PipeToken: tok[:]}}}); err != nil {
		_ = pw.Close()
		return sendErr(err)
	}
	stop := onDone(sctx, pw)
	lw := &limitWriter{w: pw, n: size}
	werr := copyPayload(lw, r)
	stop()
	cerr := pw.Close()
	switch {
	case lw.err != nil:
		// The plugin closed its end (it failed the call, or died), or the
		// call's context ended: the stream's status says which.
		if ctx.Err() != nil {
			return fmt.Errorf("plugin %s: %w", op, context.Cause(ctx))
		}
		if _, err := stream.CloseAndRecv(); err != nil {
			return fromStatus(ctx, op, err)
		}
		return fmt.Errorf("plugin %s %q: writing the pipe: %w", op, key, Transient(lw.err))
	case werr != nil:
		return fmt.Errorf("%s %q: reading the data: %w", op, key, werr)
	case lw.n > 0:
		return fmt.Errorf("%s %q: put data ended after %d of %d bytes: %w", op, key, size-lw.n, size, io.ErrUnexpectedEOF)
	case cerr != nil:
		return fmt.Errorf("plugin %s %q: closing the pipe: %w", op, key, Transient(cerr))
	}
	if err := stream.Send(&targetv1.PutRequest{Msg: &targetv1.PutRequest_Commit{Commit: &targetv1.PutCommit{}}}); err != nil {
		return sendErr(err)
	}
	_, err = stream.CloseAndRecv()
	return fromStatus(ctx, op, err)
}

// copyPayload copies r to w. A *bytes.Reader writes itself out, straight
// from its memory into the pipe; any other reader is read (its Read, not
// a WriteTo it may have by embedding, which could bypass what its Read
// does) into a pooled buffer.
func copyPayload(w io.Writer, r io.Reader) error {
	if r == nil {
		return nil
	}
	if br, ok := r.(*bytes.Reader); ok {
		_, err := br.WriteTo(w)
		return err
	}
	bp := bufPool.Get(ChunkSize)
	defer bufPool.Put(bp)
	_, err := io.CopyBuffer(w, struct{ io.Reader }{r}, *bp)
	return err
}

// limitWriter passes at most n bytes to w: more is the caller's data
// being longer than its size. err keeps w's own failure apart from the
// reader's.
type limitWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.n {
		return 0, fmt.Errorf("put data is longer than its size: %w", ErrPermanent)
	}
	n, err := l.w.Write(p)
	l.n -= int64(n)
	if err != nil {
		l.err = err
	}
	return n, err
}

// getPipe reads a range through a pipe: the write end goes to the plugin
// under a fresh token named in the request; the header gives the length
// and the plugin closes the pipe after it, then ends the stream.
func (c *client) getPipe(ctx context.Context, key string, offset, length int64) (io.ReadCloser, int64, error) {
	pr, pw, err := newPipe()
	if err != nil {
		return nil, 0, err
	}
	tok := newToken()
	err = c.plane.send(ctx, tok, pw)
	_ = pw.Close()
	if err != nil {
		_ = pr.Close()
		return nil, 0, fmt.Errorf("get %q: %w", key, err)
	}
	sctx, cancel := context.WithCancel(ctx)
	fail := func(err error) (io.ReadCloser, int64, error) {
		cancel()
		_ = pr.Close()
		c.plane.forget(tok)
		return nil, 0, err
	}
	stream, err := c.rpc.Get(sctx, &targetv1.GetRequest{Key: key, Offset: offset, Length: length, PipeToken: tok[:]}, grpc.ForceCodecV2(codec{}))
	if err != nil {
		return fail(fromStatus(ctx, "get", err))
	}
	first, err := stream.Recv()
	if err != nil {
		return fail(fromStatus(ctx, "get", err))
	}
	h := first.GetHeader()
	if h == nil || h.GetLength() < 0 || length >= 0 && h.GetLength() > length {
		return fail(fmt.Errorf("plugin get %q: bad reply header: %w", key, ErrPermanent))
	}
	g := &pipeGetReader{pipeIn: pipeIn{pipe: pr, remaining: h.GetLength()}, ctx: ctx, key: key, stream: stream, cancel: cancel}
	g.stop = onDone(sctx, pr)
	return g, h.GetLength(), nil
}

// pipeGetReader reads a Get's range from its pipe, then checks that the
// pipe ends there and the plugin ended the call without an error.
type pipeGetReader struct {
	pipeIn
	ctx    context.Context
	key    string
	stream targetv1.Target_GetClient
	cancel context.CancelFunc
	stop   func() bool
}

func (g *pipeGetReader) Read(p []byte) (int, error) {
	// A pipe that stops short: the plugin's status says why.
	return g.read(p, g.finish, g.cause)
}

// cause explains a pipe that failed or ended early by the call's status.
func (g *pipeGetReader) cause(perr error) error {
	_, err := g.stream.Recv()
	if err != nil && !errors.Is(err, io.EOF) {
		return fromStatus(g.ctx, "get", err)
	}
	if g.ctx.Err() != nil {
		return fmt.Errorf("plugin get: %w", context.Cause(g.ctx))
	}
	if errors.Is(perr, io.EOF) {
		perr = io.ErrUnexpectedEOF
	}
	return Transient(fmt.Errorf("plugin get %q: pipe ended %d bytes short: %w", g.key, g.remaining, perr))
}

// finish checks the end of a transfer: the call ends without error and
// without data messages, and the pipe holds nothing more.
func (g *pipeGetReader) finish() error {
	msg, err := g.stream.Recv()
	switch {
	case err == nil:
		_ = msg
		return fmt.Errorf("plugin get %q: a message after the pipe's data: %w", g.key, ErrPermanent)
	case !errors.Is(err, io.EOF):
		return fromStatus(g.ctx, "get", err)
	}
	switch extra, err := g.atEnd(); {
	case extra:
		return fmt.Errorf("plugin get %q: more data than announced: %w", g.key, ErrPermanent)
	case err != nil:
		return Transient(fmt.Errorf("plugin get %q: pipe: %w", g.key, err))
	}
	return io.EOF
}

func (g *pipeGetReader) Close() error {
	g.stop()
	g.cancel()
	return g.pipe.Close()
}

// SpliceSource is implemented by the reader a target's Put receives in a
// plugin process when the host sent the data over the data plane: a pipe.
// A target writing to a local file may call SpliceTo instead of reading
// (fs does); any other target just reads it.
type SpliceSource interface {
	io.Reader
	// SpliceTo moves the rest of the data into f at its current offset
	// with splice(2), without a copy through user memory, calling progress
	// (if not nil) with the total moved after each piece; it fails like
	// Read would unless exactly the Put's size arrives and the host
	// commits, and returns the bytes it moved. After it, Read returns
	// io.EOF, or its error.
	SpliceTo(ctx context.Context, f *os.File, progress func(written int64) error) (int64, error)
}

// FileRangeReader is implemented by a Get reader that reads a range of a
// local file (fs). When the host asked for the data over the data plane,
// the server shim moves the range into the pipe with splice(2), which
// passes page-cache pages by reference, instead of reading it.
type FileRangeReader interface {
	io.ReadCloser
	// FileRange returns the open file and the range to send; the file
	// stays the reader's (it closes it).
	FileRange() (f *os.File, offset, length int64)
}

// pipePutReader is the SpliceSource of a Put whose data comes through a
// pipe. Like putStreamReader, it returns io.EOF only when size bytes
// came, the pipe ended there and the host committed.
type pipePutReader struct {
	pipeIn
	stream    putStream
	size      int64
	committed bool
}

var _ SpliceSource = (*pipePutReader)(nil)

func (r *pipePutReader) Read(p []byte) (int, error) {
	return r.read(p, r.finish, r.short)
}

// pipeIn reads a transfer's remaining bytes from a pipe; the readers of
// both directions embed it.
type pipeIn struct {
	pipe      *os.File
	remaining int64
	err       error // sticky
}

// read reads into p, at most the remaining bytes; once they are all read
// it returns finish's verdict (io.EOF if all is well), and if the pipe
// fails or ends early, short's explanation.
func (in *pipeIn) read(p []byte, finish func() error, short func(error) error) (int, error) {
	if in.err != nil {
		return 0, in.err
	}
	if in.remaining == 0 {
		in.err = finish()
		return 0, in.err
	}
	if int64(len(p)) > in.remaining {
		p = p[:in.remaining]
	}
	n, err := in.pipe.Read(p)
	in.remaining -= int64(n)
	if err != nil {
		in.err = short(err)
		return n, in.err
	}
	return n, nil
}

// atEnd checks that the pipe's writer closed it after the data: a read
// finds its end, not one more byte.
func (in *pipeIn) atEnd() (extra bool, err error) {
	var one [1]byte
	n, err := in.pipe.Read(one[:])
	if n > 0 {
		return true, nil
	}
	if errors.Is(err, io.EOF) {
		return false, nil
	}
	return false, err
}

func (r *pipePutReader) short(err error) error {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return Transient(fmt.Errorf("put pipe ended after %d of %d bytes: %w", r.size-r.remaining, r.size, err))
}

// finish checks that the pipe ends after the data and waits for the
// host's commit.
func (r *pipePutReader) finish() error {
	switch extra, err := r.atEnd(); {
	case extra:
		return fmt.Errorf("put data is longer than its size %d: %w", r.size, ErrPermanent)
	case err != nil:
		return Transient(fmt.Errorf("put pipe: %w", err))
	}
	if err := recvCommit(r.stream); err != nil {
		return err
	}
	r.committed = true
	return io.EOF
}

func (r *pipePutReader) SpliceTo(ctx context.Context, f *os.File, progress func(int64) error) (int64, error) {
	if r.err != nil {
		return 0, r.err
	}
	stop := onDone(ctx, r.pipe)
	defer stop()
	var moved int64
	for r.remaining > 0 {
		n, err := splicePipe(r.pipe, f, nil, r.remaining)
		if err != nil {
			if ctx.Err() != nil {
				err = context.Cause(ctx)
			}
			r.err = r.short(err)
			return moved, r.err
		}
		if n == 0 {
			r.err = r.short(io.EOF)
			return moved, r.err
		}
		moved += n
		r.remaining -= n
		if progress != nil {
			if err := progress(r.size - r.remaining); err != nil {
				r.err = err
				return moved, err
			}
		}
	}
	r.err = r.finish()
	if !errors.Is(r.err, io.EOF) {
		return moved, r.err
	}
	return moved, nil
}

// splicePipe moves up to n bytes (at most pipeSize) between a pipe and a
// file with splice(2): from the pipe src into the file dst when off is
// nil, from the file src at *off (advancing it) into the pipe dst
// otherwise. It waits, through the runtime's poller, while the pipe is
// empty (or full), so the pipe's deadline interrupts it. 0 bytes with no
// error means the pipe's writer closed it, or the file ended.
func splicePipe(src, dst *os.File, off *int64, n int64) (int64, error) {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	var moved int64
	var serr error
	call := func(sfd, dfd uintptr) bool {
		for {
			moved, serr = unix.Splice(int(sfd), off, int(dfd), nil, int(min(n, pipeSize)), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			if !errors.Is(serr, unix.EINTR) {
				return !errors.Is(serr, unix.EAGAIN)
			}
		}
	}
	if off == nil {
		// Wait on the pipe for data; the file is never "not ready".
		err = srcRC.Read(func(sfd uintptr) bool {
			done := true
			if cerr := dstRC.Control(func(dfd uintptr) { done = call(sfd, dfd) }); cerr != nil {
				serr = cerr
			}
			return done
		})
	} else {
		// Wait on the pipe for room.
		err = dstRC.Write(func(dfd uintptr) bool {
			done := true
			if cerr := srcRC.Control(func(sfd uintptr) { done = call(sfd, dfd) }); cerr != nil {
				serr = cerr
			}
			return done
		})
	}
	if err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, serr
	}
	return moved, nil
}

// claimPipe returns the pipe a call's token names, which the caller must
// close.
func (s *server) claimPipe(ctx context.Context, raw []byte) (*os.File, error) {
	if s.plane == nil {
		return nil, fmt.Errorf("data plane: a pipe token, but this plugin has no data plane: %w", ErrPermanent)
	}
	if len(raw) != tokenSize {
		return nil, fmt.Errorf("data plane: a %d-byte pipe token, want %d: %w", len(raw), tokenSize, ErrPermanent)
	}
	return s.plane.claim(ctx, token(raw))
}

// getPipe writes n bytes of rc into pipe and closes it: by splice(2) from
// the file when rc reads a file range, by reads and writes otherwise.
func getPipe(ctx context.Context, key string, rc io.Reader, n int64, pipe *os.File) error {
	stop := onDone(ctx, pipe)
	defer stop()
	var sent int64
	var err error
	if fr, ok := rc.(FileRangeReader); ok {
		f, off, length := fr.FileRange()
		if length != n {
			return fmt.Errorf("get %q: file range of %d bytes for a %d-byte reply: %w", key, length, n, ErrPermanent)
		}
		for sent < n && err == nil {
			var m int64
			m, err = splicePipe(f, pipe, &off, n-sent)
			if err == nil && m == 0 {
				err = Transient(io.ErrUnexpectedEOF)
			}
			sent += m
		}
	} else {
		bp := bufPool.Get(ChunkSize)
		defer bufPool.Put(bp)
		for sent < n && err == nil {
			var m int
			m, err = io.ReadFull(rc, (*bp)[:min(int64(len(*bp)), n-sent)])
			if m > 0 {
				if _, werr := pipe.Write((*bp)[:m]); werr != nil {
					err = werr
				}
			}
			sent += int64(m)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = Transient(io.ErrUnexpectedEOF)
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		return fmt.Errorf("get %q: after %d of %d bytes into the pipe: %w", key, sent, n, classifyPipe(err))
	}
	if err := pipe.Close(); err != nil {
		return fmt.Errorf("get %q: closing the pipe: %w", key, Transient(err))
	}
	return nil
}

// classifyPipe classes a pipe error: an error of the pipe itself (the
// host closed its end: EPIPE) is transient; a classified one (the
// target's) or the call's context keeps its class.
func classifyPipe(err error) error {
	if errors.Is(err, ErrPermanent) || errors.Is(err, ErrTransient) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return Transient(err)
}
