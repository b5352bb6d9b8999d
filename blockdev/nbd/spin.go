package nbd

import (
	"io"
	"net"
	"os"
	"runtime"
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
// connection's reader among them, are not held up by a spinning one.
type spinReader struct {
	rc   syscall.RawConn
	spin time.Duration
	fn   func(fd uintptr) bool // r.try, bound once: Read does not allocate
	p    []byte
	n    int
	err  error
	done bool // the spin of this Read is spent
}

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
	r := &spinReader{rc: rc, spin: spin}
	r.fn = r.try
	return r
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
			return true
		}
		if r.done {
			return false
		}
		if start.IsZero() {
			start = time.Now()
		} else if time.Since(start) > r.spin {
			r.done = true
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
		return 0, err
	case r.err != nil:
		return 0, os.NewSyscallError("read", r.err)
	case r.n == 0:
		return 0, io.EOF
	}
	return r.n, nil
}
