package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a Server. The zero value serves plain NBD with the
// defaults below.
type Options struct {
	// Logger receives connection and error events; nil discards them.
	Logger *slog.Logger
	// TLSConfig enables NBD_OPT_STARTTLS with X.509 certificates. Go's
	// crypto/tls has no TLS-PSK, so PSK clients (nbdkit --tls-psk, libnbd
	// tls-psk-file) fail the handshake; see the package documentation.
	TLSConfig *tls.Config
	// RequireTLS makes the server FORCEDTLS: every option but STARTTLS and
	// ABORT is refused with NBD_REP_ERR_TLS_REQD until TLS is up. It
	// requires TLSConfig.
	RequireTLS bool
	// DefaultExport is the export served for the empty name ("" means the
	// empty name is unknown).
	DefaultExport string
	// Workers is the number of worker goroutines per connection, which
	// run the requests the reader does not run itself (default 16). It
	// also bounds the readers a slow device call holds (see transmit.go),
	// so at most 2×Workers+1 requests of one connection are in the
	// device at once.
	Workers int
	// MaxInFlightBytes caps the memory of the payload buffers (write data
	// read, read data and block status replies to send, each counted by
	// its pooled buffer's capacity) held by one connection's requests in
	// flight; the request reader waits when it is reached (default 64 MiB,
	// at least MaxPayload).
	MaxInFlightBytes int64
	// HandshakeTimeout bounds the option negotiation of one connection
	// (default 30 s).
	HandshakeTimeout time.Duration
	// ReadSpin is how long the request reader keeps trying an empty
	// socket before it parks in the runtime's poller (default 50 µs;
	// negative: park at once). See spin.go.
	ReadSpin time.Duration
	// ReplyTimeout is how long a reply write may go on without progress
	// (a reply over 4 MiB progresses each 4 MiB) before the connection is
	// closed (default 2 min; negative: no limit). A client
	// that stops reading its replies otherwise pins the connection's
	// workers, its in-flight budget and its export (whose volume then
	// stays in use: delete and revert refuse) until it disconnects. The
	// limit is checked by a watchdog every quarter of it, not by a
	// deadline per write, which would cost on the I/O path.
	ReplyTimeout time.Duration
	// MaxConnections caps the connections in the transmission phase
	// (default 256), each of which may hold MaxInFlightBytes of buffers
	// and 2×Workers+1 goroutines. Beyond it NBD_OPT_GO is refused with
	// NBD_REP_ERR_POLICY and a message saying so (the client may try
	// again on the same connection); NBD_OPT_EXPORT_NAME, which cannot be
	// refused, closes the connection. Handshakes are not counted, so
	// clients that never authenticate cannot take the places of those
	// that do: each ends within HandshakeTimeout.
	MaxConnections int
}

const (
	defaultWorkers          = 16
	defaultMaxInFlightBytes = 64 << 20
	defaultHandshakeTimeout = 30 * time.Second
	defaultReadSpin         = 50 * time.Microsecond
	defaultReplyTimeout     = 2 * time.Minute
	defaultMaxConnections   = 256
)

// Server serves Exports over NBD. Create it with NewServer, run Serve on
// one or more listeners, and stop it with Shutdown (or by cancelling the
// context passed to Serve).
type Server struct {
	exports Exports
	opts    Options
	log     *slog.Logger

	draining atomic.Bool
	mu       sync.Mutex
	lns      map[net.Listener]struct{}
	conns    map[*serverConn]struct{}
	connWG   sync.WaitGroup
	// slots holds a token per connection in transmission
	// (MaxConnections); capWarned is when the refusal was last logged.
	slots     chan struct{}
	capWarned atomic.Int64
	// watchStop ends the running watch (under mu): it runs while there
	// are connections.
	watchStop chan struct{}
	// base is the context of every connection; cancel it only to abandon
	// requests on a forced shutdown.
	base       context.Context
	cancelBase context.CancelFunc
}

// NewServer returns a server for exports.
func NewServer(exports Exports, opts Options) (*Server, error) {
	if exports == nil {
		return nil, errors.New("nbd: new server: nil Exports")
	}
	if opts.RequireTLS && opts.TLSConfig == nil {
		return nil, errors.New("nbd: new server: RequireTLS without TLSConfig")
	}
	if opts.Workers <= 0 {
		opts.Workers = defaultWorkers
	}
	if opts.MaxInFlightBytes <= 0 {
		opts.MaxInFlightBytes = defaultMaxInFlightBytes
	}
	opts.MaxInFlightBytes = max(opts.MaxInFlightBytes, MaxPayload)
	if opts.ReadSpin == 0 {
		opts.ReadSpin = defaultReadSpin
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = defaultHandshakeTimeout
	}
	if opts.ReplyTimeout == 0 {
		opts.ReplyTimeout = defaultReplyTimeout
	}
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = defaultMaxConnections
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	base, cancel := context.WithCancel(context.Background())
	return &Server{
		exports:    exports,
		opts:       opts,
		log:        log,
		lns:        make(map[net.Listener]struct{}),
		conns:      make(map[*serverConn]struct{}),
		slots:      make(chan struct{}, opts.MaxConnections),
		base:       base,
		cancelBase: cancel,
	}, nil
}

// ListenUnix listens on a unix socket at path, replacing a stale socket
// file left by an earlier process (but never a file of another kind).
func ListenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("nbd: listen unix %s: exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("nbd: listen unix %s: a server is already listening", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("nbd: listen unix %s: remove stale socket: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("nbd: listen unix %s: %w", path, err)
	}
	return l, nil
}

// ListenTCP listens on a TCP address such as "127.0.0.1:10809". TCP is
// opt-in: serve it only with TLS (RequireTLS) unless the network is
// trusted.
func ListenTCP(addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: listen tcp %s: %w", addr, err)
	}
	return l, nil
}

// Serve accepts connections on l until Shutdown is called or ctx is done,
// and returns ErrServerClosed then (or the listener's error). Cancelling
// ctx shuts the whole server down gracefully, as Shutdown does without a
// deadline. Serve closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		_ = l.Close()
		return ErrServerClosed
	}
	s.lns[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.lns, l)
		s.mu.Unlock()
		_ = l.Close()
	}()

	stop := context.AfterFunc(ctx, func() {
		if err := s.Shutdown(context.Background()); err != nil {
			s.log.Warn("nbd: shutdown", "err", err)
		}
	})
	defer stop()

	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.draining.Load() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("nbd: accept on %s: %w", l.Addr(), err)
			}
			// Anything else (out of descriptors or buffers, a connection
			// aborted before it was accepted, a timeout) passes: back off
			// (at most a second, one warning each time) and accept again,
			// as net/http does for temporary errors. Returning would stop
			// the listener, and the agent with it.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("nbd: accept", "err", err, "retry", delay)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
			}
			continue
		}
		delay = 0
		c := newServerConn(s, nc)
		s.mu.Lock()
		if s.draining.Load() {
			s.mu.Unlock()
			_ = nc.Close()
			return ErrServerClosed
		}
		s.conns[c] = struct{}{}
		s.connWG.Add(1)
		if s.watchStop == nil && s.opts.ReplyTimeout > 0 {
			s.watchStop = make(chan struct{})
			go s.watch(s.watchStop)
		}
		s.mu.Unlock()
		go func() {
			defer s.connWG.Done()
			c.serve()
			s.mu.Lock()
			delete(s.conns, c)
			if len(s.conns) == 0 && s.watchStop != nil {
				close(s.watchStop)
				s.watchStop = nil
			}
			s.mu.Unlock()
		}()
	}
}

// Shutdown stops the server gracefully: it closes the listeners, stops
// reading new requests, lets the requests in flight finish and their
// replies go out, flushes each connection's export, and closes the
// connections. If ctx ends first, Shutdown closes the remaining
// connections, cancels their device calls that have not started, and
// returns ctx's error without waiting for calls in progress. Shutdown is
// idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining.Store(true)
	for l := range s.lns {
		_ = l.Close()
	}
	for c := range s.conns {
		c.stopReading()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.cancelBase()
	s.mu.Lock()
	for c := range s.conns {
		_ = c.raw.Close()
	}
	s.mu.Unlock()
	return fmt.Errorf("nbd: shutdown: connections closed before draining: %w", ctx.Err())
}

// takeSlot takes a place in the transmission phase (MaxConnections);
// false, logged at most every 10 s, when there is none.
func (s *Server) takeSlot() bool {
	select {
	case s.slots <- struct{}{}:
		return true
	default:
	}
	now := time.Now().UnixNano()
	if last := s.capWarned.Load(); now-last > int64(10*time.Second) && s.capWarned.CompareAndSwap(last, now) {
		s.log.Warn("nbd: connection cap reached; refusing new connections until one ends", "max_connections", cap(s.slots))
	}
	return false
}

func (s *Server) releaseSlot() { <-s.slots }

// watch closes connections whose reply write has gone on for
// ReplyTimeout (see Options.ReplyTimeout). It checks every quarter of the
// timeout, and runs while there are connections: Serve starts it with
// the first, and the end of the last closes stop.
func (s *Server) watch(stop <-chan struct{}) {
	limit := s.opts.ReplyTimeout
	tick := time.NewTicker(max(limit/4, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-stop:
			return
		}
		now := time.Now()
		s.mu.Lock()
		for c := range s.conns {
			c.checkReplyStuck(now, limit)
		}
		s.mu.Unlock()
	}
}
