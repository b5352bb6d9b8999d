package nbd

import (
	"io"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
)

// spinReader reads a socket, and when it is empty keeps trying for up to
// spin before it parks the goroutine in the runtime's poller.
//
// Why: the request reader waits for the client between batches. Parked,
// its wake-up costs a trip through the poller and the scheduler (epoll,
// futex, a context switch each way: 19% of the server's CPU, and sysmon
// another 7%, in a profile of random 4 KiB writes), where nbdkit's
// threads just block in read(2). The client's next requests are usually
// microseconds away. Measured through NBD on a volume filled by nbdcopy
// (fio nbd, 3 rounds alternating against nbdkit; NOTES.md, 2026-11-27
// ~13:00): random 4 KiB writes 58-79k IOPS parking at once, 64-86k with
// 20 µs of spin, 70-92k with 50 µs (nbdkit 82-100k); 1 MiB writes
// 1800-2069, 1799-2226 and 2279-2719 (nbdkit 2156-2352). Each retry
// yields the processor (runtime.Gosched), so runnable goroutines, another
// connection's reader among them, are not held up by a spinning one; and
// at most GOMAXPROCS-1 readers (at least one) spin at once, so that many
// connections at low queue depth do not keep every processor spinning:
// the others park at once.
type spinReader struct {
	rc      syscall.RawConn
	conn    net.Conn // for the addresses in errors
	spin    time.Duration
	max     int32                 // spinners allowed at once
	fn      func(fd uintptr) bool // r.try, bound once: Read does not allocate
	p       []byte
	n       int
	err     error
	done    bool // the spin of this Read is spent
	holding bool // r counts in spinners
}

// spinners counts the readers spinning now, in all connections.
var spinners atomic.Int32

// newSpinReader returns a reader of c that spins for spin, or c itself
// when spin is not positive or c is not a socket (a TLS connection, a
// pipe in tests).
func newSpinReader(c net.Conn, spin time.Duration) io.Reader {
	if spin <= 0 {
		return c
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	r := &spinReader{rc: rc, conn: c, spin: spin, max: int32(max(1, runtime.GOMAXPROCS(0)-1))}
	r.fn = r.try
	return r
}

// claim counts r among the spinners if there is room.
func (r *spinReader) claim() bool {
	if spinners.Add(1) > r.max {
		spinners.Add(-1)
		return false
	}
	r.holding = true
	return true
}

func (r *spinReader) release() {
	if r.holding {
		spinners.Add(-1)
		r.holding = false
	}
}

// try reads the socket once, and again while it is empty until the spin
// is spent; it returns false to park until the socket is readable.
func (r *spinReader) try(fd uintptr) bool {
	var start time.Time
	for {
		n, err := syscall.Read(int(fd), r.p)
		if err == syscall.EINTR {
			continue
		}
		if err != syscall.EAGAIN {
			r.n, r.err = n, err
			r.release()
			return true
		}
		if r.done {
			return false
		}
		if start.IsZero() {
			if !r.claim() {
				r.done = true
				return false
			}
			start = time.Now()
		} else if time.Since(start) > r.spin {
			r.done = true
			r.release()
			return false
		}
		runtime.Gosched()
	}
}

// Read reads into p like the connection's Read: deadlines and Close wake
// it (they end the poller's wait; a spin ends by itself).
func (r *spinReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.p, r.done, r.n, r.err = p, false, 0, nil
	err := r.rc.Read(r.fn)
	r.p = nil
	switch {
	case err != nil:
		return 0, r.opError(err)
	case r.err != nil:
		return 0, r.opError(os.NewSyscallError("read", r.err))
	case r.n == 0:
		return 0, io.EOF
	}
	return r.n, nil
}

// opError wraps err as the connection's own Read would.
func (r *spinReader) opError(err error) error {
	la := r.conn.LocalAddr()
	return &net.OpError{Op: "read", Net: la.Network(), Source: la, Addr: r.conn.RemoteAddr(), Err: err}
}
