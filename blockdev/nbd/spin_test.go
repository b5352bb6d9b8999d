package nbd

import (
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// unixPair returns the two ends of a connected unix socket.
func unixPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	client, err = net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.FailNow()
	}
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return server, client
}

// spinReader reads what the peer sends whether it was there already,
// arrives while the reader spins or only after it parked; and ends like
// the connection's own Read on the peer's close, a deadline and Close.
func TestSpinReader(t *testing.T) {
	t.Parallel()
	msg := []byte("request")
	tests := []struct {
		name string
		// act runs while Read waits (or before it, for delay < 0).
		delay time.Duration
		act   func(t *testing.T, server, client net.Conn)
		check func(t *testing.T, n int, buf []byte, err error)
	}{
		{"data already there", -1, nil, nil},
		{"data within the spin", 10 * time.Microsecond, nil, nil},
		{"data after the reader parked", 30 * time.Millisecond, nil, nil},
		{"peer closes", 30 * time.Millisecond,
			func(t *testing.T, _, client net.Conn) { client.Close() },
			func(t *testing.T, n int, _ []byte, err error) {
				if n != 0 || err != io.EOF {
					t.Fatalf("got %d, %v; want 0, io.EOF", n, err)
				}
			}},
		{"read deadline", 30 * time.Millisecond,
			func(t *testing.T, server, _ net.Conn) { server.SetReadDeadline(time.Unix(1, 0)) },
			func(t *testing.T, n int, _ []byte, err error) {
				var ne net.Error
				if n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
					t.Fatalf("got %d, %v; want a timeout", n, err)
				}
			}},
		{"closed", 30 * time.Millisecond,
			func(t *testing.T, server, _ net.Conn) { server.Close() },
			func(t *testing.T, n int, _ []byte, err error) {
				if n != 0 || !errors.Is(err, net.ErrClosed) {
					t.Fatalf("got %d, %v; want net.ErrClosed", n, err)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			server, client := unixPair(t)
			r := newSpinReader(server, 5*time.Millisecond)
			if _, ok := r.(*spinReader); !ok {
				t.Fatalf("newSpinReader of a unix socket returned %T", r)
			}
			act := tc.act
			if act == nil {
				act = func(t *testing.T, _, client net.Conn) {
					if _, err := client.Write(msg); err != nil {
						t.Error(err)
					}
				}
			}
			if tc.delay < 0 {
				act(t, server, client)
			} else {
				go func() {
					time.Sleep(tc.delay)
					act(t, server, client)
				}()
			}
			buf := make([]byte, 64)
			n, err := r.Read(buf)
			if tc.check != nil {
				tc.check(t, n, buf, err)
				return
			}
			if err != nil || string(buf[:n]) != string(msg) {
				t.Fatalf("got %q, %v; want %q", buf[:n], err, msg)
			}
		})
	}
}

// A Read does not allocate, and connections that are not sockets, or a
// spin that is not positive, keep the connection's own Read.
func TestSpinReaderAllocsAndFallback(t *testing.T) {
	server, client := unixPair(t)
	r := newSpinReader(server, time.Millisecond)
	buf := make([]byte, 8)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := client.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(r, buf); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per write and read, want 0", allocs)
	}
	// A reader gives its place among the spinners back, or no other
	// reader would spin again.
	if n := spinners.Load(); n != 0 {
		t.Errorf("%d spinners counted after the reads, want 0", n)
	}
	// With no room, a reader parks at once and still reads.
	spinners.Add(1 << 20)
	go func() {
		time.Sleep(10 * time.Millisecond)
		client.Write(make([]byte, len(buf)))
	}()
	_, err := io.ReadFull(r, buf)
	if spinners.Add(-1<<20) != 0 || err != nil {
		t.Errorf("full spinners: read %v, %d spinners left", err, spinners.Load())
	}
	if got := newSpinReader(server, -1); got != server {
		t.Errorf("negative spin: got %T, want the connection", got)
	}
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if got := newSpinReader(p1, time.Millisecond); got != p1 {
		t.Errorf("net.Pipe: got %T, want the connection", got)
	}
}
