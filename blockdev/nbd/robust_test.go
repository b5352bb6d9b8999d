package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// clientStream builds the bytes a client sends, without reading replies.
type clientStream struct{ b []byte }

func newClientStream() *clientStream {
	return &clientStream{b: binary.BigEndian.AppendUint32(nil, clientFixedNewstyle|clientNoZeroes)}
}

func (s *clientStream) option(opt uint32, data []byte) *clientStream {
	s.b = binary.BigEndian.AppendUint64(s.b, magicOption)
	s.b = binary.BigEndian.AppendUint32(s.b, opt)
	s.b = binary.BigEndian.AppendUint32(s.b, uint32(len(data)))
	s.b = append(s.b, data...)
	return s
}

func (s *clientStream) request(typ, flags uint16, handle, off uint64, length uint32, payload []byte) *clientStream {
	s.b = binary.BigEndian.AppendUint32(s.b, magicRequest)
	s.b = binary.BigEndian.AppendUint16(s.b, flags)
	s.b = binary.BigEndian.AppendUint16(s.b, typ)
	s.b = binary.BigEndian.AppendUint64(s.b, handle)
	s.b = binary.BigEndian.AppendUint64(s.b, off)
	s.b = binary.BigEndian.AppendUint32(s.b, length)
	s.b = append(s.b, payload...)
	return s
}

func (s *clientStream) raw(b []byte) *clientStream { s.b = append(s.b, b...); return s }

// goStream negotiates structured replies and base:allocation and enters
// transmission on "vol".
func goStream() *clientStream {
	return newClientStream().
		option(optStructuredReply, nil).
		option(optSetMetaContext, metaData("vol", metaBaseAllocation)).
		option(optGo, infoData("vol", infoBlockSize))
}

// TestMisbehavingClients sends garbage and disconnects at every awkward
// point; the server must survive, keep serving, and return to its
// baseline goroutine count.
func TestMisbehavingClients(t *testing.T) {
	e, _, _ := memExports(t)
	srvCfg, _ := writeTestCerts(t, t.TempDir())
	ts := startServer(t, e, Options{TLSConfig: srvCfg})
	baseline := runtime.NumGoroutine()

	garbage := pattern(7, 8192)
	tests := []struct {
		name string
		send []byte
		// readAll: read the server's output to EOF after sending (the
		// server must close); otherwise close right after sending.
		readAll bool
	}{
		{name: "garbage instead of flags", send: garbage, readAll: true},
		{name: "unknown client flags", send: []byte{0xff, 0xff, 0xff, 0xff}, readAll: true},
		{name: "bad option magic", send: newClientStream().raw(garbage[:64]).b, readAll: true},
		{name: "option too long", send: newClientStream().raw(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, magicOption), optList), 1<<30)).b, readAll: true},
		{name: "disconnect in option data", send: newClientStream().option(optGo, infoData("vol")).b[:30]},
		{name: "disconnect after greeting", send: nil},
		{name: "bad request magic", send: goStream().raw(garbage[:64]).b, readAll: true},
		{name: "disconnect mid header", send: goStream().request(cmdRead, 0, 1, 0, 4096, nil).b[:len(goStream().b)+10]},
		{name: "disconnect mid payload", send: goStream().request(cmdWrite, 0, 1, 0, 1<<20, make([]byte, 100)).b},
		{name: "disconnect with reads in flight", send: func() []byte {
			s := goStream()
			for i := range 64 {
				s.request(cmdRead, 0, uint64(i), uint64(i)*65536, 65536, nil)
			}
			return s.b
		}()},
		{name: "write beyond skippable size", send: goStream().request(cmdWrite, 0, 1, 0, maxSkipPayload+1, nil).b, readAll: true},
		{name: "garbage after STARTTLS", send: newClientStream().option(optStartTLS, nil).raw(garbage).b, readAll: true},
		{name: "DISC with requests in flight", send: goStream().request(cmdWrite, 0, 1, 0, 4096, garbage[:4096]).request(cmdDisc, 0, 2, 0, 0, nil).b, readAll: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("unix", ts.sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write(tt.send); err != nil && !tt.readAll {
				t.Logf("write: %v", err)
			}
			if tt.readAll {
				// The server closes; io.Copy returns at EOF (or reset).
				_, _ = io.Copy(io.Discard, c)
			}
		})
	}

	// The server still serves.
	tc := connect(t, ts.sock, "vol", true)
	if r := tc.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("read after misbehaving clients: errno %d", r.errno)
	}
	tc.disconnect()
	waitGoroutines(t, baseline)
}

// waitGoroutines waits for the goroutine count to come back to baseline
// (connections wind down asynchronously after the client leaves); it
// fails with the live stacks if that does not happen before the test's
// deadline.
func waitGoroutines(t *testing.T, baseline int) {
	t.Helper()
	deadline, ok := t.Deadline()
	if !ok {
		deadline = time.Now().Add(time.Minute)
	}
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline.Add(-5 * time.Second)) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("%d goroutines, baseline %d:\n%s", runtime.NumGoroutine(), baseline, buf[:n])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestOversizedWriteSkipped checks a write over MaxPayload that can be
// skipped is answered EINVAL and the connection stays in sync.
func TestOversizedWriteSkipped(t *testing.T) {
	t.Parallel()
	e, _, _ := memExports(t)
	ts := startServer(t, e, Options{})
	tc := connect(t, ts.sock, "vol", false)
	if r := tc.do(cmdWrite, 0, 0, MaxPayload+4096, make([]byte, MaxPayload+4096)); r.errno != errInval {
		t.Fatalf("oversized write: errno %d, want EINVAL", r.errno)
	}
	if r := tc.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 || !bytes.Equal(r.data, make([]byte, 4096)) {
		t.Fatalf("read after oversized write: errno %d", r.errno)
	}
	tc.disconnect()
}

// panicCounter is a slog.Handler that counts the server's "request
// panicked" records: handle recovers a panic and answers EIO, so without
// it a fuzz input that panics past negotiation would pass.
type panicCounter struct{ n *atomic.Int64 }

func (h panicCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h panicCounter) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h panicCounter) WithGroup(string) slog.Handler            { return h }
func (h panicCounter) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "nbd: request panicked" {
		h.n.Add(1)
	}
	return nil
}

// fuzzServer is one server whose connections the fuzz targets drive over
// in-memory pipes; panics counts the requests that panicked.
func fuzzServer(tb testing.TB) (s *Server, panics *atomic.Int64) {
	e := NewMapExports()
	rw := newMemVolume("vol", 1<<20)
	ro := newMemVolume("vol@s", 1<<20)
	ro.ro = true
	for _, v := range []*memVolume{rw, ro} {
		if err := e.Add(v, v.name); err != nil {
			tb.Fatal(err)
		}
	}
	panics = new(atomic.Int64)
	s, err := NewServer(e, Options{Workers: 4, DefaultExport: "vol", Logger: slog.New(panicCounter{panics})})
	if err != nil {
		tb.Fatal(err)
	}
	return s, panics
}

// runSession feeds in to one server connection as the client stream and
// discards the server's output; it returns when the connection ends.
func runSession(s *Server, in []byte) {
	newServerConn(s, &scriptConn{r: bytes.NewReader(in)}).serve()
}

// scriptConn is a connection whose client sent the bytes of r and then
// closed its write side, and reads and discards whatever the server sends.
// (A net.Pipe closed after the input failed the server's first reply
// write after it, so no session got past negotiation.)
type scriptConn struct{ r *bytes.Reader }

func (c *scriptConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *scriptConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return scriptAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr             { return scriptAddr{} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

type scriptAddr struct{}

func (scriptAddr) Network() string { return "script" }
func (scriptAddr) String() string  { return "script" }

// FuzzSession drives negotiation and transmission with arbitrary client
// bytes. Properties: no panic (a request's panic, which the server
// answers with EIO, included), no hang. (TestMisbehavingClients checks that
// no goroutine is left.)
func FuzzSession(f *testing.F) {
	f.Add([]byte{})
	f.Add(newClientStream().b)
	f.Add(newClientStream().option(optList, nil).option(optAbort, nil).b)
	f.Add(newClientStream().option(optInfo, infoData("vol", infoName, infoDescription)).option(optInfo, infoData("nope")).b)
	f.Add(newClientStream().option(optListMetaContext, metaData("vol")).option(optStartTLS, nil).option(99, []byte("x")).b)
	f.Add(newClientStream().option(optExportName, []byte("vol")).request(cmdRead, 0, 1, 0, 512, nil).b)
	f.Add(goStream().request(cmdWrite, cmdFlagFUA, 1, 4096, 8, []byte("abcdefgh")).request(cmdFlush, 0, 2, 0, 0, nil).request(cmdDisc, 0, 3, 0, 0, nil).b)
	f.Add(goStream().request(cmdWriteZeroes, cmdFlagNoHole, 1, 0, 65536, nil).request(cmdTrim, 0, 2, 65536, 65536, nil).
		request(cmdBlockStatus, 0, 3, 0, 1<<20, nil).request(cmdRead, 0, 4, 0, 1<<20, nil).request(cmdRead, cmdFlagDF, 5, 0, 1<<20, nil).b)
	f.Add(newClientStream().option(optGo, infoData("vol@s")).request(cmdWrite, 0, 1, 0, 4, []byte("abcd")).request(cmdRead, 0, 2, 1<<20, 1, nil).b)
	f.Add(goStream().request(cmdWrite, 0, 1, 0, MaxPayload+1, nil).b)
	s, panics := fuzzServer(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		before := panics.Load()
		runSession(s, in)
		if n := panics.Load() - before; n > 0 {
			t.Fatalf("%d requests panicked (answered EIO)", n)
		}
	})
}

// FuzzDecodeRequest checks the request decoder and validator: a request
// that passes validation lies inside the export and the payload limit.
func FuzzDecodeRequest(f *testing.F) {
	for _, b := range [][]byte{
		goStream().request(cmdRead, 0, 1, 0, 4096, nil).b,
		newClientStream().request(cmdWrite, cmdFlagFUA, 7, 1<<20-4096, 4096, nil).b,
		newClientStream().request(cmdBlockStatus, cmdFlagReqOne, 7, 0, 1<<31, nil).b,
		newClientStream().request(cmdWriteZeroes, cmdFlagFastZero|cmdFlagNoHole, 7, 1<<63, 1, nil).b,
		newClientStream().request(99, 0xffff, 0, 0, 0, nil).b,
	} {
		f.Add(b[len(b)-requestHeaderSize:], false, true)
	}
	f.Fuzz(func(t *testing.T, b []byte, structured, ro bool) {
		if len(b) < requestHeaderSize {
			return
		}
		h, err := decodeRequest(b)
		if err != nil {
			if !strings.Contains(err.Error(), "magic") {
				t.Fatalf("decode error %v", err)
			}
			return
		}
		c := &serverConn{size: 1 << 20, structured: structured, metaBase: structured}
		if ro {
			c.tflags = flagReadOnly
		}
		errno, msg := c.check(&request{TransmissionRequestHeader: h})
		if errno != 0 {
			if msg == "" {
				t.Fatalf("errno %d without a message", errno)
			}
			return
		}
		if h.Type == cmdFlush {
			return
		}
		if h.Offset+uint64(h.Length) > 1<<20 || h.Offset+uint64(h.Length) < h.Offset {
			t.Fatalf("accepted %s [%d,+%d) outside a 1 MiB export", cmdName(h.Type), h.Offset, h.Length)
		}
		if (h.Type == cmdRead || h.Type == cmdWrite) && h.Length > MaxPayload {
			t.Fatalf("accepted %s of %d bytes", cmdName(h.Type), h.Length)
		}
		if ro && (h.Type == cmdWrite || h.Type == cmdTrim || h.Type == cmdWriteZeroes) {
			t.Fatalf("accepted %s on a read-only export", cmdName(h.Type))
		}
	})
}
