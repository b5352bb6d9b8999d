package plugins

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/strata-block/strata/internal/writeback"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Objects as local files on the data plane (doc.go, "Objects as local
// files"): for a Get the host asks on the data-plane socket for an
// object's range, the plugin opens it through its target and answers with
// the file's descriptor, and the host reads the range itself; for a Put
// the plugin answers with the descriptor of the new temporary file, the
// host writes it and commits. Both sides are here; the shared socket is
// dataplane.go's.
//
// Each request carries its own reply socket (one end of a fresh
// SOCK_SEQPACKET socketpair), so no goroutine sorts replies out: the
// caller waits in a blocking recvmsg(2) on its end, which the kernel wakes
// directly, and the plugin's receive loop answers an open request itself. On
// this project's 2-core VMs a round trip then took about 70 µs, against
// about 120 µs with the runtime's poller on both sides and the replies
// handed to the callers on channels (measured with a two-process
// ping-pong between 300 µs pauses).

// Message kinds: the first byte of a request, or of the message that
// commits a Put.
const (
	opOpen   byte = 'O' // open request (Get)
	opPut    byte = 'P' // create request (Put)
	opCommit byte = 'K' // commit of a created object, on its reply socket
)

// putIfAbsent is the create request's flag for PutIfAbsent.
const putIfAbsent = 1

// Byte layout, big-endian integers:
//
//	open request (host to plugin):   'O' offset[8] length[8] key, with the
//	                                 reply socket attached (SCM_RIGHTS)
//	create request (host to plugin): 'P' size[8] flags[8] key, likewise
//	reply (plugin to host):          code[4] offset[8] length[8] text
//	commit (host to plugin):         'K', on the reply socket
//
// A reply with code 0 to an open request carries exactly one descriptor,
// a regular file holding the object's length bytes from offset; to a
// create request, the new object's empty temporary file, open for
// writing. The host writes the object into it, closes it and sends the
// commit on the reply socket; a second reply gives the commit's outcome.
// A host that closes the reply socket instead aborts the Put. A reply
// with any other code carries no descriptor and text is the error's (a
// gRPC code, as toStatus maps it, or codeNotFile). A request is always
// longer than a token (17 bytes and a key, which is never empty), which
// is how the plugin tells it from a pipe's message (a token and a pipe).
const (
	openRequestSize   = 1 + 8 + 8
	createRequestSize = 1 + 8 + 8
	openReplySize     = 4 + 8 + 8
	// maxReplyText bounds an error text in a reply; longer ones are cut.
	maxReplyText = 2048
)

// codeNotFile answers a request for an object the target does not keep
// in a local file: the host reads it through a pipe instead. It lies
// outside the gRPC codes.
const codeNotFile = 1 << 16

// errNotFile is the host's side of codeNotFile.
var errNotFile = errors.New("data plane: the object is not a local file")

// openReply is a decoded open reply; f is set exactly when code is 0.
type openReply struct {
	code   uint32
	off, n int64
	text   string
	f      *os.File
}

func (r openReply) close() {
	if r.f != nil {
		_ = r.f.Close()
	}
}

// FileTarget is implemented by a target whose objects are local files
// (fs): its Get readers are FileRangeReaders, and PutFile lets a caller
// write a new object's file itself. In a plugin with a data plane, the
// server shim then offers the host descriptors of those files
// (ConfigureResponse.file_get and file_put), and a Get or Put costs the
// host what it costs the target in-process, plus round trips on the
// socket.
type FileTarget interface {
	Target
	// ServesFiles reports whether every Get returns a FileRangeReader
	// and PutFile works.
	ServesFiles() bool
	// PutFile starts a Put (PutIfAbsent if ifAbsent) of size bytes under
	// key, whose data the caller writes into FilePut.File; it has Put's
	// checks of key and size. ctx bounds PutFile itself; the FilePut
	// outlives it (Commit has its own).
	PutFile(ctx context.Context, key string, size int64, ifAbsent bool) (FilePut, error)
}

// FilePut is a Put in progress whose data the caller writes into a file
// (FileTarget.PutFile). Nothing is visible under the key before Commit.
type FilePut interface {
	// File is the file to write the object's size bytes into, from
	// offset 0. It belongs to the FilePut.
	File() *os.File
	// Commit makes the object visible, durably and atomically as Put (or
	// PutIfAbsent) would, if the file holds exactly the Put's size bytes;
	// either way the Put is over. As with Put, an error before the object
	// took its key stores nothing; one after (making the directory
	// durable) may leave it visible, and a retry makes the same state.
	Commit(ctx context.Context) error
	// Abort ends the Put storing nothing; after Commit it does nothing.
	Abort()
}

func servesFiles(t Target) bool {
	ft, ok := t.(FileTarget)
	return ok && ft.ServesFiles()
}

// Host side.

// open asks the plugin for the descriptor of key's range and waits for
// the reply, as long as ctx lasts and the plugin lives. The caller owns
// the reply's file.
func (h *hostPlane) open(ctx context.Context, key string, offset, length int64) (openReply, error) {
	msg := make([]byte, openRequestSize+len(key))
	msg[0] = opOpen
	binary.BigEndian.PutUint64(msg[1:], uint64(offset))
	binary.BigEndian.PutUint64(msg[9:], uint64(length))
	copy(msg[openRequestSize:], key)
	sock, err := h.request(ctx, "get", msg)
	if err != nil {
		return openReply{}, err
	}
	defer unix.Close(sock)
	return recvReply(ctx, "get", sock, true)
}

// request sends msg with the plugin's end of a fresh reply socket and
// returns the host's end, which the caller closes.
func (h *hostPlane) request(ctx context.Context, op string, msg []byte) (int, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("data plane: socketpair: %w", Transient(err))
	}
	mine, theirs := fds[0], fds[1]
	err = h.sendmsg(ctx, msg, unix.UnixRights(theirs))
	_ = unix.Close(theirs) // the plugin has its own copy now
	if err != nil {
		_ = unix.Close(mine)
		if ctx.Err() != nil {
			return -1, fmt.Errorf("plugin %s: %w", op, context.Cause(ctx))
		}
		return -1, fmt.Errorf("data plane: sending a %s request: %w", op, Transient(err))
	}
	return mine, nil
}

// recvReply waits for a reply on fd. The end of ctx shuts fd down, which
// wakes the wait and tells the plugin the host is gone; a plugin that
// died closes its end, which ends the wait too.
func recvReply(ctx context.Context, op string, fd int, withFile bool) (openReply, error) {
	stop := shutdownOnDone(ctx, fd)
	var buf [openReplySize + maxReplyText + 1]byte
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, flags, err := recvmsg(fd, buf[:], oob)
	stop()
	if ctx.Err() != nil {
		if err == nil {
			closeAll(rightsOf(oob[:oobn]))
		}
		return openReply{}, fmt.Errorf("plugin %s: %w", op, context.Cause(ctx))
	}
	if err != nil {
		return openReply{}, fmt.Errorf("data plane: waiting for a %s reply: %w", op, Transient(err))
	}
	if n == 0 && oobn == 0 {
		return openReply{}, fmt.Errorf("data plane: the plugin closed the %s reply socket without an answer: %w", op, ErrTransient)
	}
	files, err := parseRights(oob[:oobn])
	if err == nil && flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		err = errors.New("truncated message")
	}
	var r openReply
	if err == nil {
		r, err = parseOpenReply(buf[:n], files, withFile)
	}
	if err != nil {
		closeAll(files)
		return openReply{}, fmt.Errorf("data plane: a malformed %s reply: %v: %w", op, err, ErrPermanent)
	}
	return r, nil
}

// shutdownOnDone shuts the socket fd down both ways when ctx ends, which
// wakes a recvmsg(2) waiting on it and tells the peer. Once the returned
// stop has returned, no shutdown comes any more, so fd may be closed.
func shutdownOnDone(ctx context.Context, fd int) (stop func()) {
	var mu sync.Mutex
	done := false
	after := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			_ = unix.Shutdown(fd, unix.SHUT_RDWR)
		}
	})
	return func() {
		after()
		mu.Lock()
		defer mu.Unlock()
		done = true
	}
}

// rightsOf returns the descriptors in oob, ignoring malformed messages.
func rightsOf(oob []byte) []*os.File {
	files, _ := parseRights(oob)
	return files
}

// parseOpenReply decodes a reply and the descriptors that came with it:
// one if withFile and the code is 0, none otherwise.
func parseOpenReply(msg []byte, files []*os.File, withFile bool) (openReply, error) {
	if len(msg) < openReplySize || len(msg) > openReplySize+maxReplyText {
		return openReply{}, fmt.Errorf("a %d-byte reply", len(msg))
	}
	r := openReply{
		code: binary.BigEndian.Uint32(msg),
		off:  int64(binary.BigEndian.Uint64(msg[4:])),
		n:    int64(binary.BigEndian.Uint64(msg[12:])),
		text: string(msg[openReplySize:]),
	}
	switch {
	case r.code == 0 && withFile && len(files) != 1:
		return openReply{}, fmt.Errorf("a success with %d descriptors", len(files))
	case (r.code != 0 || !withFile) && len(files) != 0:
		return openReply{}, fmt.Errorf("code %d with %d descriptors", r.code, len(files))
	case r.code == 0 && withFile:
		r.f = files[0]
	}
	return r, nil
}

// getFile is Get through a descriptor the plugin passed: errNotFile if
// the target does not keep the object in a local file. The descriptor is
// the object's file itself (doc.go), so before it is read it is checked
// to be a regular file, and the reply's range exactly the one Get must
// yield: from offset, length bytes clipped to the file's end (all of it
// past offset if length < 0).
func (c *client) getFile(ctx context.Context, key string, offset, length int64) (io.ReadCloser, int64, error) {
	r, err := c.plane.open(ctx, key, offset, length)
	switch {
	case err != nil:
		return nil, 0, err
	case r.code == codeNotFile:
		return nil, 0, errNotFile
	case r.code != 0:
		return nil, 0, fromStatus(ctx, "get", status.Error(codes.Code(r.code), r.text))
	}
	bad := func(why string, args ...any) (io.ReadCloser, int64, error) {
		r.close()
		return nil, 0, fmt.Errorf("plugin get %q: bad descriptor reply: %s: %w", key, fmt.Sprintf(why, args...), ErrPermanent)
	}
	var st unix.Stat_t
	if err := fstat(r.f, &st); err != nil {
		return bad("fstat: %v", err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return bad("not a regular file (mode %#o)", st.Mode)
	case r.off < 0 || r.n < 0 || r.off > st.Size-r.n:
		return bad("range %d+%d of a %d-byte file", r.off, r.n, st.Size)
	case length >= 0 && r.n > length:
		return bad("%d bytes for a %d-byte request", r.n, length)
	case r.off != offset:
		return bad("range from %d for a request from %d", r.off, offset)
	}
	want := st.Size - offset
	if length >= 0 {
		want = min(want, length)
	}
	if r.n != want {
		return bad("%d bytes from %d of a %d-byte file for a request of length %d, which must yield %d", r.n, offset, st.Size, length, want)
	}
	return &ctxSection{ctx: ctx, FileSection: NewFileSection(r.f, key, r.off, r.n)}, r.n, nil
}

// ctxSection is the host's FileSection of a passed descriptor: like the
// other paths through a plugin, it stops with the call's context.
type ctxSection struct {
	ctx context.Context
	*FileSection
}

func (s *ctxSection) Read(p []byte) (int, error) {
	if s.ctx.Err() != nil {
		return 0, fmt.Errorf("plugin get %q: %w", s.key, context.Cause(s.ctx))
	}
	return s.FileSection.Read(p)
}

// putFile is Put (op "put") or PutIfAbsent ("put-if-absent") through the
// descriptor of the object's temporary file, which the plugin creates:
// the host writes the data into it, closes it and commits on the reply
// socket; closing the socket instead aborts. errNotFile if the target
// keeps no local files.
func (c *client) putFile(ctx context.Context, op, key string, r io.Reader, size int64) error {
	msg := make([]byte, createRequestSize+len(key))
	msg[0] = opPut
	binary.BigEndian.PutUint64(msg[1:], uint64(size))
	if op != "put" {
		binary.BigEndian.PutUint64(msg[9:], putIfAbsent)
	}
	copy(msg[createRequestSize:], key)
	sock, err := c.plane.request(ctx, op, msg)
	if err != nil {
		return err
	}
	defer unix.Close(sock) // before a commit: the plugin aborts
	rep, err := recvReply(ctx, op, sock, true)
	switch {
	case err != nil:
		return err
	case rep.code == codeNotFile:
		return errNotFile
	case rep.code != 0:
		return fromStatus(ctx, op, status.Error(codes.Code(rep.code), rep.text))
	}
	if err := writeFile(ctx, op, key, rep.f, r, size); err != nil {
		return err
	}
	if err := unix.Sendmsg(sock, []byte{opCommit}, nil, nil, unix.MSG_NOSIGNAL); err != nil {
		return fmt.Errorf("plugin %s %q: sending the commit: %w", op, key, Transient(err))
	}
	rep, err = recvReply(ctx, op, sock, false)
	switch {
	case err != nil:
		return err
	case rep.code != 0:
		return fromStatus(ctx, op, status.Error(codes.Code(rep.code), rep.text))
	}
	return nil
}

// writeFile writes exactly size bytes of r into f, a plugin's new
// temporary file, and closes f; an error means the Put must abort.
func writeFile(ctx context.Context, op, key string, f *os.File, r io.Reader, size int64) error {
	defer f.Close()
	var st unix.Stat_t
	if err := fstat(f, &st); err != nil {
		return fmt.Errorf("plugin %s %q: fstat of the object's file: %w", op, key, Transient(err))
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != 0 {
		return fmt.Errorf("plugin %s %q: bad descriptor reply: not an empty regular file (mode %#o, %d bytes): %w", op, key, st.Mode, st.Size, ErrPermanent)
	}
	// As the fs target does in-process: writeback of each MiB starts as it
	// is written, and the plugin's fsync at the commit finds less to do.
	lw := &limitWriter{w: &writeback.Writer{F: f}, n: size}
	src := r
	if _, whole := r.(*bytes.Reader); !whole && r != nil {
		// A *bytes.Reader is written out in one piece (copyPayload), with
		// the context checked after; any other reader stops with it.
		src = ContextReader(ctx, r)
	}
	werr := copyPayload(lw, src)
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("plugin %s: %w", op, context.Cause(ctx))
	case lw.err != nil:
		return fmt.Errorf("plugin %s %q: writing the object's file: %w", op, key, FileError(lw.err))
	case werr != nil:
		return fmt.Errorf("%s %q: reading the data: %w", op, key, werr)
	case lw.n > 0:
		return fmt.Errorf("%s %q: put data ended after %d of %d bytes: %w", op, key, size-lw.n, size, io.ErrUnexpectedEOF)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("plugin %s %q: closing the object's file: %w", op, key, FileError(err))
	}
	return nil
}

func fstat(f *os.File, st *unix.Stat_t) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), st) }); err != nil {
		return err
	}
	return serr
}

// Plugin side.

// fileServer is what the plugin's plane needs to answer requests: the
// server shim's target, with its checks.
type fileServer interface {
	getFile(ctx context.Context, key string, offset, length int64) (io.ReadCloser, int64, error)
	putFile(ctx context.Context, key string, size int64, ifAbsent bool) (FilePut, error)
}

// serveFiles makes the plane answer requests through fs; before it,
// every request is answered codeNotFile.
func (p *pluginPlane) serveFiles(fs fileServer) {
	p.mu.Lock()
	p.files = fs
	p.mu.Unlock()
}

func (p *pluginPlane) fileServer() fileServer {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.files
}

// parseOpenRequest decodes an open request. The key is not validated
// here: the target's Get does that, as for a gRPC call.
func parseOpenRequest(msg []byte) (key string, offset, length int64, err error) {
	if len(msg) <= openRequestSize || msg[0] != opOpen {
		return "", 0, 0, fmt.Errorf("a %d-byte message that is not an open request", len(msg))
	}
	offset = int64(binary.BigEndian.Uint64(msg[1:]))
	length = int64(binary.BigEndian.Uint64(msg[9:]))
	return string(msg[openRequestSize:]), offset, length, nil
}

// parseCreateRequest decodes a create request; the key is the target's
// to check.
func parseCreateRequest(msg []byte) (key string, size int64, ifAbsent bool, err error) {
	if len(msg) <= createRequestSize || msg[0] != opPut {
		return "", 0, false, fmt.Errorf("a %d-byte message that is not a create request", len(msg))
	}
	flags := binary.BigEndian.Uint64(msg[9:])
	if flags&^putIfAbsent != 0 {
		return "", 0, false, fmt.Errorf("a create request with unknown flags %#x", flags)
	}
	size = int64(binary.BigEndian.Uint64(msg[1:]))
	return string(msg[createRequestSize:]), size, flags == putIfAbsent, nil
}

// serveRequest answers the request msg (an open or a create request) on
// its reply socket; it fails only for a message that is neither, which it
// answers with InvalidArgument. An open request is answered on the
// receive loop: opening a local file takes microseconds, and handing it to
// a goroutine of its own added about 25 µs to the round trip. The price is
// that a target whose open stalls (a hung NFS server) holds up the pipes
// behind it, for calls that would wait on that same filesystem. A create
// request goes to a goroutine of its own (servePut): it may create and
// fsync directories, and then waits for the host's commit.
func (p *pluginPlane) serveRequest(msg []byte, reply *os.File) error {
	switch msg[0] {
	case opOpen:
		defer reply.Close()
		key, offset, length, err := parseOpenRequest(msg)
		if err != nil {
			p.reply(reply, "get", "", errorReply(fmt.Errorf("data plane: %w: %w", err, ErrInvalidKey)))
			return err
		}
		ctx, cancel := context.WithTimeout(p.ctx, p.wait)
		defer cancel()
		r, release := p.openFile(ctx, key, offset, length)
		if release != nil {
			defer release.Close()
		}
		p.reply(reply, "get", key, r)
		return nil
	case opPut:
		key, size, ifAbsent, err := parseCreateRequest(msg)
		if err != nil {
			p.reply(reply, "put", "", errorReply(fmt.Errorf("data plane: %w: %w", err, ErrInvalidKey)))
			_ = reply.Close()
			return err
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.servePut(reply, key, size, ifAbsent)
		}()
		return nil
	}
	p.reply(reply, "request", "", errorReply(fmt.Errorf("data plane: a %d-byte message that is not a request: %w", len(msg), ErrInvalidKey)))
	_ = reply.Close()
	return fmt.Errorf("a %d-byte message with a descriptor that is not a request", len(msg))
}

// encodeReply lays r out for the wire (its descriptor goes apart).
func encodeReply(r openReply) []byte {
	out := make([]byte, openReplySize, openReplySize+min(len(r.text), maxReplyText))
	binary.BigEndian.PutUint32(out, r.code)
	binary.BigEndian.PutUint64(out[4:], uint64(r.off))
	binary.BigEndian.PutUint64(out[12:], uint64(r.n))
	return append(out, truncateText(r.text, maxReplyText)...)
}

// reply sends r on the reply socket, reporting whether it went out. One
// message on a socket of its own never waits for room; a host that gave
// up has closed its end (EPIPE), which is logged only at debug level.
func (p *pluginPlane) reply(sock *os.File, op, key string, r openReply) bool {
	var oob []byte
	if r.f != nil {
		// The caller keeps the descriptor open until sendmsg has copied it.
		oob = unix.UnixRights(int(r.f.Fd()))
	}
	err := unix.Sendmsg(int(sock.Fd()), encodeReply(r), oob, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
	return p.sent(op, key, err)
}

// sent logs a reply that did not go out and reports whether it did.
func (p *pluginPlane) sent(op, key string, err error) bool {
	switch {
	case err == nil:
		return true
	case errors.Is(err, unix.EPIPE), errors.Is(err, unix.ECONNRESET):
		p.logger.Debug("data plane: the host left before the reply", "op", op, "key", key)
	default:
		p.logger.Warn("data plane: sending a reply", "op", op, "key", key, "err", err)
	}
	return false
}

// errorReply is the reply for a failed call.
func errorReply(err error) openReply {
	st := status.Convert(toStatus(err))
	return openReply{code: uint32(st.Code()), text: st.Message()}
}

var notFileReply = openReply{code: codeNotFile, text: errNotFile.Error()}

// openFile runs the target's Get and returns the reply for it; release,
// if not nil, is the reader to close once the reply is sent (the host
// has its own copy of the descriptor by then).
func (p *pluginPlane) openFile(ctx context.Context, key string, offset, length int64) (openReply, io.Closer) {
	fs := p.fileServer()
	if fs == nil {
		return notFileReply, nil
	}
	rc, n, err := fs.getFile(ctx, key, offset, length)
	if err != nil {
		return errorReply(err), nil
	}
	fr, ok := rc.(FileRangeReader)
	if !ok {
		_ = rc.Close()
		return notFileReply, nil
	}
	f, off, l := fr.FileRange()
	if l != n {
		_ = rc.Close()
		return openReply{code: uint32(codes.Internal), text: fmt.Sprintf("get %q: file range of %d bytes for a %d-byte reply", key, l, n)}, nil
	}
	return openReply{off: off, n: l, f: f}, rc
}

// servePut answers a create request: it starts the target's Put, sends
// the temporary file's descriptor, waits for the host's commit and sends
// the commit's outcome. Anything but a commit — the host closing the
// socket (it failed, gave up or died), the plane shutting down, a stray
// message — aborts the Put. While the Put commits, a host that closes its
// end cancels the commit's context, as a cancelled gRPC call would. The
// waits go through the runtime's poller (net.FileConn), not a blocked
// thread each: a slow host holding many Puts open costs no threads.
func (p *pluginPlane) servePut(reply *os.File, key string, size int64, ifAbsent bool) {
	fs := p.fileServer()
	if fs == nil {
		p.reply(reply, "put", key, notFileReply)
		_ = reply.Close()
		return
	}
	fp, err := fs.putFile(p.ctx, key, size, ifAbsent)
	if err != nil {
		p.reply(reply, "put", key, errorReply(err))
		_ = reply.Close()
		return
	}
	ok := p.reply(reply, "put", key, openReply{n: size, f: fp.File()})
	var conn *net.UnixConn
	if ok {
		c, cerr := net.FileConn(reply) // a duplicate, non-blocking
		if uc, isUnix := c.(*net.UnixConn); cerr == nil && isUnix {
			conn = uc
		} else if cerr == nil {
			_ = c.Close()
		}
	}
	_ = reply.Close()
	if conn == nil {
		fp.Abort()
		return
	}
	defer conn.Close()
	stop := context.AfterFunc(p.ctx, func() { _ = conn.SetReadDeadline(longAgo) })
	var buf [2]byte
	n, _, _, _, err := conn.ReadMsgUnix(buf[:], nil)
	if !stop() || err != nil || n != 1 || buf[0] != opCommit {
		fp.Abort()
		if err == nil && n > 0 {
			p.logger.Warn("data plane: a stray message instead of a commit; the put is aborted", "key", key, "bytes", n)
		}
		return
	}
	ctx, cancel := context.WithCancel(p.ctx)
	defer cancel()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		// Returns when the host shuts its end down or closes it (or sends
		// anything more), or at the deadline set below.
		var one [1]byte
		_, _, _, _, _ = conn.ReadMsgUnix(one[:], nil)
		cancel()
	}()
	cerr := fp.Commit(ctx)
	_ = conn.SetReadDeadline(longAgo)
	<-watched
	r := openReply{}
	if cerr != nil {
		r = errorReply(cerr)
	}
	_, _, err = conn.WriteMsgUnix(encodeReply(r), nil, nil)
	p.sent("put", key, err)
}

// truncateText cuts s to at most n bytes at a rune boundary.
func truncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
