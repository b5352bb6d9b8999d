package plugins

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The local data plane: object payloads through pipes whose ends are
// passed over a private unix socket, next to the gRPC connection that
// carries everything else (doc.go explains why and what it guarantees).
// Linux only, like the rest of the package (the manager's Pdeathsig).

// DataPlaneEnv is the environment variable through which the host tells a
// plugin the number of its inherited data-plane socket. A plugin that
// serves the data plane says so in its ConfigureResponse; one that does
// not (an external plugin written against the portable protocol) ignores
// the variable and the descriptor, and its payloads travel in data
// messages.
const DataPlaneEnv = "STRATA_TARGET_DATA_PLANE_FD"

// dataPlaneFD is the descriptor number of the socket in the plugin: the
// first of exec.Cmd.ExtraFiles.
const dataPlaneFD = 3

// tokenSize is the length of a pipe token: 128 random bits, so a token
// names one transfer and nothing else.
const tokenSize = 16

// pipeSize is the capacity asked for each pipe (F_SETPIPE_SZ), one
// protocol chunk: the writer moves a whole megabyte per wake-up. Where the
// kernel refuses (pipe-max-size, a user's pipe quota), the default 64 KiB
// stays and only costs more wake-ups.
const pipeSize = 1 << 20

type token [tokenSize]byte

func newToken() token {
	var t token
	_, _ = rand.Read(t[:]) // never fails (crypto/rand)
	return t
}

// newPipe returns a pipe, both ends close-on-exec and non-blocking
// (os.Pipe), enlarged to pipeSize where allowed.
func newPipe() (r, w *os.File, err error) {
	r, w, err = os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("data plane: pipe: %w", Transient(err))
	}
	if rc, err := w.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			_, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, pipeSize)
		})
	}
	return r, w, nil
}

// hostPlane is the host's end of a plugin's data-plane socket.
type hostPlane struct {
	conn *net.UnixConn
}

// newHostPlane returns a connected pair of SOCK_SEQPACKET unix sockets:
// the host's end and the end the plugin inherits (child, to go into
// exec.Cmd.ExtraFiles and be closed by the host once the plugin started).
// Both are close-on-exec: only the one plugin it is meant for inherits
// child, as descriptor 3. Nothing listens, so no other process can
// connect.
func newHostPlane() (*hostPlane, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("data plane: socketpair: %w", Transient(err))
	}
	host := os.NewFile(uintptr(fds[0]), "data-plane")
	child := os.NewFile(uintptr(fds[1]), "data-plane-plugin")
	conn, err := net.FileConn(host) // dups the descriptor
	_ = host.Close()
	if err != nil {
		_ = child.Close()
		return nil, nil, fmt.Errorf("data plane: %w", Transient(err))
	}
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		_ = conn.Close()
		_ = child.Close()
		return nil, nil, fmt.Errorf("data plane: socket is a %T: %w", conn, ErrPermanent)
	}
	return &hostPlane{conn: uc}, child, nil
}

// send passes the pipe end f to the plugin under tok. One message per
// descriptor: SOCK_SEQPACKET keeps concurrent senders' messages whole.
// The caller still owns (and closes) its copy of f. If the socket is full
// (a plugin that stopped reading it, e.g. a stopped process), send waits
// for room only as long as ctx lasts.
func (h *hostPlane) send(ctx context.Context, tok token, f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("data plane: %w", Transient(err))
	}
	var serr error
	if cerr := rc.Control(func(fd uintptr) {
		serr = h.sendmsg(ctx, tok[:], unix.UnixRights(int(fd)))
	}); cerr != nil {
		serr = cerr
	}
	if serr != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("data plane: sending a pipe: %w", context.Cause(ctx))
		}
		// The plugin died or closed its end: a restart brings a new socket.
		return fmt.Errorf("data plane: sending a pipe: %w", Transient(serr))
	}
	return nil
}

// sendRetry is how often send tries again while the socket is full.
const sendRetry = time.Millisecond

// sendmsg sends one message without blocking, trying again every
// sendRetry while the socket is full, until ctx ends.
func (h *hostPlane) sendmsg(ctx context.Context, msg, oob []byte) error {
	rc, err := h.conn.SyscallConn()
	if err != nil {
		return err
	}
	for {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			for {
				serr = unix.Sendmsg(int(fd), msg, oob, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
				if !errors.Is(serr, unix.EINTR) {
					return
				}
			}
		}); err != nil {
			return err
		}
		if !errors.Is(serr, unix.EAGAIN) {
			return serr
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(sendRetry):
		}
	}
}

// forget tells the plugin that the call tok was for has failed on the
// host's side: a token without a descriptor. The plugin closes the pipe if
// no call claimed it, instead of keeping it until unclaimedTTL. Best
// effort, never waiting: if it is lost (the plugin is gone, pipe and all,
// or its socket is full) the TTL still applies.
func (h *hostPlane) forget(tok token) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = h.sendmsg(ctx, tok[:], nil)
}

func (h *hostPlane) close() error { return h.conn.Close() }

// pluginPlane is a plugin's end of the data-plane socket: it receives pipe
// ends under their tokens and hands each to the call that names its
// token. A pipe nobody claims within unclaimedTTL is closed (the host's
// call failed before it reached the plugin); a call whose pipe does not
// come within claimWait, or before its context ends, fails. It also
// answers open requests (fileplane.go).
//
// The socket is read with blocking recvmsg(2) on a goroutine of its own,
// not through the runtime's poller: the kernel then wakes that thread
// directly when the host sends, which on this project's 2-core VMs took
// about 25 µs off each open request's round trip (fileplane.go).
type pluginPlane struct {
	sock   *os.File // in blocking mode; closed by receive when it ends
	fd     int      // sock's descriptor
	logger *slog.Logger

	// ttl bounds how long an unclaimed pipe is kept, wait how long a
	// call waits for its pipe.
	ttl, wait time.Duration

	mu         sync.Mutex
	ready      map[token]*os.File
	waiting    map[token]chan *os.File
	files      fileServer // answers requests once set (serveFiles)
	err        error      // set once the socket is gone
	sockClosed bool       // receive closed sock: fd may name another file
	done       chan struct{}

	// ctx ends when the plane shuts: requests in progress stop.
	ctx    context.Context
	cancel context.CancelFunc
	// wg counts the goroutines serving create requests (servePut);
	// received is closed when the receive loop has ended.
	wg       sync.WaitGroup
	received chan struct{}
}

// Timeouts of the plugin's data plane. A pipe reaches the plugin a few
// microseconds before the call naming it, or after it by as much as the
// plugin's scheduling lags; these bounds only clean up after a host that
// failed between the two.
const (
	unclaimedTTL = time.Minute
	claimWait    = 30 * time.Second
)

// pluginPlaneFromEnv takes the data-plane socket the host passed, if any:
// (nil, nil) when the environment names none. It unsets the variable so
// the plugin's own children never see it, and checks that the descriptor
// is a unix SOCK_SEQPACKET socket before trusting it.
func pluginPlaneFromEnv(logger *slog.Logger) (*pluginPlane, error) {
	v, ok := os.LookupEnv(DataPlaneEnv)
	if !ok {
		return nil, nil
	}
	_ = os.Unsetenv(DataPlaneEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("data plane: %s=%q is not a descriptor number: %w", DataPlaneEnv, v, ErrPermanent)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil || typ != unix.SOCK_SEQPACKET {
		return nil, fmt.Errorf("data plane: descriptor %d is not a SOCK_SEQPACKET socket (type %d, %v): %w", fd, typ, err, ErrPermanent)
	}
	unix.CloseOnExec(fd)
	return newPluginPlane(os.NewFile(uintptr(fd), "data-plane"), logger, unclaimedTTL, claimWait), nil
}

// newPluginPlane serves the socket sock, which it takes over and puts in
// blocking mode, until it is closed or the host's end goes away.
func newPluginPlane(sock *os.File, logger *slog.Logger, ttl, wait time.Duration) *pluginPlane {
	p := &pluginPlane{
		sock: sock,
		fd:   int(sock.Fd()), // blocking mode

		logger:  logger,
		ttl:     ttl,
		wait:    wait,
		ready:   make(map[token]*os.File),
		waiting: make(map[token]chan *os.File),
		done:    make(chan struct{}),
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.received = make(chan struct{})
	go p.receive()
	return p
}

// receive reads messages until the socket fails: each should be a token
// with one descriptor, a pipe end, a token alone (forget), or an open
// request with its reply socket (fileplane.go), which it answers itself.
// Anything else is logged and its descriptors closed.
func (p *pluginPlane) receive() {
	defer close(p.received)
	defer func() {
		p.mu.Lock()
		p.sockClosed = true
		_ = p.sock.Close()
		p.mu.Unlock()
	}()
	buf := make([]byte, max(openRequestSize, createRequestSize)+MaxKeyLength+1)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for {
		n, oobn, flags, err := recvmsg(p.fd, buf, oob)
		if err == nil && n == 0 && oobn == 0 {
			err = errors.New("the host closed it")
		}
		if err != nil {
			p.shut(fmt.Errorf("data plane: %w", Transient(err)))
			return
		}
		files, perr := parseRights(oob[:oobn])
		switch {
		case perr == nil && flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0:
			perr = errors.New("truncated message")
		case perr == nil && n > tokenSize && len(files) == 1:
			if perr = p.serveRequest(buf[:n], files[0]); perr == nil {
				continue
			}
			files = nil // serveRequest closed it
		case perr == nil && n != tokenSize:
			perr = fmt.Errorf("a %d-byte token", n)
		case perr == nil && len(files) > 1:
			perr = fmt.Errorf("%d descriptors with one token", len(files))
		}
		if perr != nil {
			p.logger.Warn("data plane: dropping a bad message", "err", perr)
			closeAll(files)
			continue
		}
		if len(files) == 0 {
			p.forget(token(buf[:tokenSize]))
			continue
		}
		p.deliver(token(buf[:tokenSize]), files[0])
	}
}

// recvmsg receives one message on the blocking socket fd, waiting until
// it comes; descriptors arrive close-on-exec (MSG_CMSG_CLOEXEC), which is
// what parseRights expects.
func recvmsg(fd int, buf, oob []byte) (n, oobn, flags int, err error) {
	for {
		n, oobn, flags, _, err = unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if !errors.Is(err, unix.EINTR) {
			return n, oobn, flags, err
		}
	}
}

// parseRights returns the descriptors of SCM_RIGHTS messages in oob as
// files; they came close-on-exec (recvmsg).
func parseRights(oob []byte) ([]*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var files []*os.File
	for _, m := range msgs {
		// Whole descriptors only: ParseUnixRights indexes past the end
		// of a payload that is not a multiple of 4 bytes (the kernel
		// never sends one, but those it holds are ours to close).
		m.Data = m.Data[:len(m.Data)&^3]
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "pipe"))
		}
	}
	return files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		_ = f.Close()
	}
}

// deliver hands f to the call waiting for tok, or keeps it for the call
// to come, closing it if none claims it within unclaimedTTL.
func (p *pluginPlane) deliver(tok token, f *os.File) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ch, ok := p.waiting[tok]; ok {
		delete(p.waiting, tok)
		ch <- f // buffered, and only ever one send
		return
	}
	if _, dup := p.ready[tok]; dup || p.err != nil {
		p.logger.Warn("data plane: dropping a pipe whose token is in use or after shutdown")
		_ = f.Close()
		return
	}
	p.ready[tok] = f
	time.AfterFunc(p.ttl, func() {
		p.mu.Lock()
		g, ok := p.ready[tok]
		if ok && g == f {
			delete(p.ready, tok)
		}
		p.mu.Unlock()
		if ok && g == f {
			p.logger.Warn("data plane: closing a pipe no call claimed", "after", p.ttl)
			_ = f.Close()
		}
	})
}

// forget closes the pipe sent under tok if no call claimed it: the host
// gave up on the call, which may never reach the plugin.
func (p *pluginPlane) forget(tok token) {
	p.mu.Lock()
	f, ok := p.ready[tok]
	delete(p.ready, tok)
	p.mu.Unlock()
	if ok {
		_ = f.Close()
	}
}

// claim returns the pipe sent under tok, waiting for it until ctx ends,
// claimWait passes or the socket is gone. The caller owns the pipe.
func (p *pluginPlane) claim(ctx context.Context, tok token) (*os.File, error) {
	p.mu.Lock()
	if f, ok := p.ready[tok]; ok {
		delete(p.ready, tok)
		p.mu.Unlock()
		return f, nil
	}
	if p.err != nil {
		err := p.err
		p.mu.Unlock()
		return nil, err
	}
	if _, dup := p.waiting[tok]; dup {
		p.mu.Unlock()
		return nil, fmt.Errorf("data plane: two calls name one pipe token: %w", ErrPermanent)
	}
	ch := make(chan *os.File, 1)
	p.waiting[tok] = ch
	p.mu.Unlock()
	timer := time.NewTimer(p.wait)
	defer timer.Stop()
	var err error
	select {
	case f := <-ch:
		return f, nil
	case <-ctx.Done():
		err = fmt.Errorf("data plane: waiting for the call's pipe: %w", context.Cause(ctx))
	case <-timer.C:
		err = fmt.Errorf("data plane: no pipe arrived for the call's token within %v: %w", p.wait, ErrTransient)
	case <-p.done:
		err = p.shutErr()
	}
	p.mu.Lock()
	_, still := p.waiting[tok]
	delete(p.waiting, tok)
	p.mu.Unlock()
	if !still {
		// Delivered while we gave up: ours to close.
		_ = (<-ch).Close()
	}
	return nil, err
}

func (p *pluginPlane) shutErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// shut records why the plane stopped, closes every pipe not yet claimed
// and wakes the waiting calls.
func (p *pluginPlane) shut(err error) {
	p.mu.Lock()
	if p.err != nil {
		p.mu.Unlock()
		return
	}
	p.err = err
	ready := p.ready
	p.ready = make(map[token]*os.File)
	p.mu.Unlock()
	p.cancel()
	for _, f := range ready {
		_ = f.Close()
	}
	close(p.done)
}

// close stops the plane: shutting the socket down wakes the receive
// loop, which ends and closes it; the end of the plane's context aborts
// the Puts waiting for their commits and cancels those committing. close
// returns once the loop and every Put have finished, so that the target
// can then be closed under none of them (the plugin closes the plane
// before its target).
func (p *pluginPlane) close() error {
	var err error
	p.mu.Lock()
	if !p.sockClosed {
		err = unix.Shutdown(p.fd, unix.SHUT_RDWR)
	}
	p.mu.Unlock()
	p.shut(fmt.Errorf("data plane: %w", ErrClosed))
	<-p.received
	p.wg.Wait()
	return err
}
