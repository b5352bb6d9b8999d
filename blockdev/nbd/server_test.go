package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/strata-block/strata/blockdev"
)

// testLogWriter sends server logs to the test log.
type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// testServer is a Server on a unix socket, shut down at test cleanup.
type testServer struct {
	srv  *Server
	sock string
	done chan error
}

func startServer(t testing.TB, exports Exports, opts Options) *testServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "nbdt") // short: unix socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "nbd.sock")
	l, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	srv, err := NewServer(exports, opts)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{srv: srv, sock: sock, done: make(chan error, 1)}
	go func() { ts.done <- srv.Serve(context.Background(), l) }()
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

// stop shuts the server down (idempotent) and checks Serve's result.
func (ts *testServer) stop(t testing.TB) {
	t.Helper()
	if err := ts.srv.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if ts.done == nil {
		return
	}
	if err := <-ts.done; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve returned %v, want ErrServerClosed", err)
	}
	ts.done = nil
}

// memExports exports fresh memory volumes: "vol" (writable, 16 MiB) and
// "vol@snap" (read-only, 16 MiB).
func memExports(t testing.TB) (*MapExports, *memVolume, *memVolume) {
	t.Helper()
	e := NewMapExports()
	rw := newMemVolume("vol", 16<<20)
	ro := newMemVolume("vol@snap", 16<<20)
	ro.ro = true
	for _, v := range []*memVolume{rw, ro} {
		if err := e.Add(v, "test "+v.name); err != nil {
			t.Fatal(err)
		}
	}
	return e, rw, ro
}

// serveOne serves dev alone and connects one client to it.
func serveOne(t *testing.T, dev blockdev.Volume, opts Options, structured bool) (*testServer, *testClient) {
	t.Helper()
	e := NewMapExports()
	if err := e.Add(dev, ""); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, e, opts)
	return ts, connect(t, ts.sock, dev.Name(), structured)
}

func pattern(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestNegotiation(t *testing.T) {
	t.Parallel()
	e, _, _ := memExports(t)
	ts := startServer(t, e, Options{DefaultExport: "vol"})

	rwFlags := flagHasFlags | flagSendFlush | flagSendFUA | flagSendTrim | flagSendWriteZeroes | flagSendFastZero | flagCanMultiConn
	roFlags := flagHasFlags | flagSendFlush | flagCanMultiConn | flagReadOnly
	if ExportFlags(false) != rwFlags || ExportFlags(true) != roFlags {
		t.Fatalf("ExportFlags = %#x, %#x; want %#x, %#x (what a kernel attach is given)", ExportFlags(false), ExportFlags(true), rwFlags, roFlags)
	}
	tests := []struct {
		name       string
		structured bool
		opt        uint32
		data       []byte
		wantTypes  []uint32 // reply types in order
		check      func(t *testing.T, reps []optReply)
	}{
		{name: "list", opt: optList, wantTypes: []uint32{repServer, repServer, repAck}, check: func(t *testing.T, reps []optReply) {
			var got []string
			for _, r := range reps[:2] {
				n := binary.BigEndian.Uint32(r.data)
				got = append(got, fmt.Sprintf("%s|%s", r.data[4:4+n], r.data[4+n:]))
			}
			if want := "vol|test vol,vol@snap|test vol@snap"; strings.Join(got, ",") != want {
				t.Errorf("list = %q, want %q", got, want)
			}
		}},
		{name: "list with data", opt: optList, data: []byte{1}, wantTypes: []uint32{repErrInvalid}},
		{name: "info writable", opt: optInfo, data: infoData("vol", infoName, infoDescription), wantTypes: []uint32{repInfo, repInfo, repInfo, repInfo, repAck},
			check: func(t *testing.T, reps []optReply) {
				checkInfo(t, reps, 16<<20, rwFlags, "vol", "test vol")
			}},
		{name: "info read-only structured", structured: true, opt: optInfo, data: infoData("vol@snap"), wantTypes: []uint32{repInfo, repInfo, repAck},
			check: func(t *testing.T, reps []optReply) {
				checkInfo(t, reps, 16<<20, roFlags|flagSendDF, "", "")
			}},
		{name: "info default export", opt: optInfo, data: infoData(""), wantTypes: []uint32{repInfo, repInfo, repAck}},
		{name: "info unknown export", opt: optInfo, data: infoData("nope"), wantTypes: []uint32{repErrUnknown}},
		{name: "go unknown export", opt: optGo, data: infoData("vol@nope"), wantTypes: []uint32{repErrUnknown}},
		{name: "info short", opt: optInfo, data: []byte{0, 0, 0, 9, 'a'}, wantTypes: []uint32{repErrInvalid}},
		{name: "info name overruns", opt: optInfo, data: []byte{0, 0, 0, 9, 'a', 0, 0}, wantTypes: []uint32{repErrInvalid}},
		{name: "info request count mismatch", opt: optInfo, data: append(infoData("vol"), 0), wantTypes: []uint32{repErrInvalid}},
		{name: "unknown option", opt: 99, wantTypes: []uint32{repErrUnsup}},
		{name: "extended headers unsupported", opt: 11, wantTypes: []uint32{repErrUnsup}},
		{name: "structured reply with data", opt: optStructuredReply, data: []byte{0}, wantTypes: []uint32{repErrInvalid}},
		{name: "starttls without TLS configured", opt: optStartTLS, wantTypes: []uint32{repErrPolicy}},
		{name: "set meta context unstructured", opt: optSetMetaContext, data: metaData("vol", metaBaseAllocation), wantTypes: []uint32{repErrInvalid}},
		{name: "set meta context", structured: true, opt: optSetMetaContext, data: metaData("vol", metaBaseAllocation, "qemu:dirty-bitmap:x"),
			wantTypes: []uint32{repMetaContext, repAck}, check: func(t *testing.T, reps []optReply) {
				if id, name := binary.BigEndian.Uint32(reps[0].data), string(reps[0].data[4:]); id != metaBaseAllocationID || name != metaBaseAllocation {
					t.Errorf("context %d %q", id, name)
				}
			}},
		{name: "set meta context unknown only", structured: true, opt: optSetMetaContext, data: metaData("vol", "x-foo:bar"), wantTypes: []uint32{repAck}},
		{name: "list meta contexts all", structured: true, opt: optListMetaContext, data: metaData("vol"), wantTypes: []uint32{repMetaContext, repAck}},
		{name: "list meta contexts base:", structured: true, opt: optListMetaContext, data: metaData("vol", "base:"), wantTypes: []uint32{repMetaContext, repAck}},
		{name: "meta context malformed", structured: true, opt: optListMetaContext, data: metaData("vol", "base:")[:12], wantTypes: []uint32{repErrInvalid}},
		{name: "abort", opt: optAbort, wantTypes: []uint32{repAck}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tc := newTestClient(t, dialUnix(t, ts.sock))
			if tt.structured {
				tc.option(optStructuredReply, nil)
			}
			reps := tc.option(tt.opt, tt.data)
			var got []uint32
			for _, r := range reps {
				got = append(got, r.typ)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.wantTypes) {
				t.Fatalf("reply types %#x, want %#x", got, tt.wantTypes)
			}
			if tt.check != nil {
				tt.check(t, reps)
			}
		})
	}
}

func checkInfo(t *testing.T, reps []optReply, size uint64, flags uint16, name, desc string) {
	t.Helper()
	var sawExport, sawBlock bool
	for _, r := range reps {
		if r.typ != repInfo {
			continue
		}
		switch binary.BigEndian.Uint16(r.data) {
		case infoExport:
			sawExport = true
			if s, f := binary.BigEndian.Uint64(r.data[2:]), binary.BigEndian.Uint16(r.data[10:]); s != size || f != flags {
				t.Errorf("export info size %d flags %#x, want %d %#x", s, f, size, flags)
			}
		case infoBlockSize:
			sawBlock = true
			lo, pref, hi := binary.BigEndian.Uint32(r.data[2:]), binary.BigEndian.Uint32(r.data[6:]), binary.BigEndian.Uint32(r.data[10:])
			if lo != 1 || pref != 4096 || hi != 32<<20 {
				t.Errorf("block sizes %d/%d/%d", lo, pref, hi)
			}
		case infoName:
			if string(r.data[2:]) != name {
				t.Errorf("name %q, want %q", r.data[2:], name)
			}
		case infoDescription:
			if string(r.data[2:]) != desc {
				t.Errorf("description %q, want %q", r.data[2:], desc)
			}
		}
	}
	if !sawExport || !sawBlock {
		t.Errorf("missing NBD_INFO_EXPORT (%v) or NBD_INFO_BLOCK_SIZE (%v)", sawExport, sawBlock)
	}
}

// TestExportName covers the old NBD_OPT_EXPORT_NAME: success, and a
// closed connection for an unknown export.
func TestExportName(t *testing.T) {
	t.Parallel()
	e, _, _ := memExports(t)
	ts := startServer(t, e, Options{})
	tc := newTestClient(t, dialUnix(t, ts.sock))
	b := binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, optExportName)
	b = binary.BigEndian.AppendUint32(b, 3)
	tc.writeAll(append(b, "vol"...))
	var r [10]byte
	tc.readFull(r[:])
	if size := binary.BigEndian.Uint64(r[:8]); size != 16<<20 {
		t.Fatalf("size %d", size)
	}
	if got := tc.do(cmdRead, 0, 0, 4096, nil); got.errno != 0 || len(got.data) != 4096 {
		t.Fatalf("read after EXPORT_NAME: errno %d, %d bytes", got.errno, len(got.data))
	}

	tc2 := newTestClient(t, dialUnix(t, ts.sock))
	b = binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, optExportName)
	b = binary.BigEndian.AppendUint32(b, 4)
	tc2.writeAll(append(b, "nope"...))
	if n, err := io.Copy(io.Discard, tc2.br); n != 0 || err != nil {
		t.Fatalf("unknown EXPORT_NAME: got %d bytes, %v; want the connection closed", n, err)
	}
}

// errFail is a backend failure that is neither ENOSPC nor a range error.
var errFail = errors.New("disk on fire")

func TestRequestErrors(t *testing.T) {
	t.Parallel()
	const size = 16 << 20
	tests := []struct {
		name   string
		export string
		fail   func(op string, off, n int64) error
		typ    uint16
		flags  uint16
		off    uint64
		length uint32
		want   uint32
	}{
		{name: "read past end", export: "vol", typ: cmdRead, off: size - 4096, length: 8192, want: errInval},
		{name: "read offset past end", export: "vol", typ: cmdRead, off: 1 << 62, length: 1, want: errInval},
		{name: "read too large", export: "vol", typ: cmdRead, length: MaxPayload + 1, want: errInval},
		{name: "write past end", export: "vol", typ: cmdWrite, off: size - 512, length: 1024, want: errNoSpc},
		{name: "write zeroes past end", export: "vol", typ: cmdWriteZeroes, off: size, length: 1, want: errNoSpc},
		{name: "trim past end", export: "vol", typ: cmdTrim, off: size, length: 4096, want: errInval},
		{name: "block status past end", export: "vol", typ: cmdBlockStatus, off: size, length: 4096, want: errInval},
		{name: "block status zero length", export: "vol", typ: cmdBlockStatus, length: 0, want: errInval},
		{name: "write read-only", export: "vol@snap", typ: cmdWrite, length: 4096, want: errPerm},
		{name: "trim read-only", export: "vol@snap", typ: cmdTrim, length: 4096, want: errPerm},
		{name: "zero read-only", export: "vol@snap", typ: cmdWriteZeroes, length: 4096, want: errPerm},
		{name: "unknown command", export: "vol", typ: 42, want: errInval},
		{name: "cache not offered", export: "vol", typ: 5, length: 4096, want: errInval},
		{name: "unknown flag", export: "vol", typ: cmdRead, flags: 1 << 9, length: 4096, want: errInval},
		{name: "flag of another command", export: "vol", typ: cmdWrite, flags: cmdFlagReqOne, length: 4096, want: errInval},
		{name: "device ENOSPC", export: "vol", typ: cmdWrite, length: 4096, want: errNoSpc,
			fail: func(string, int64, int64) error { return fmt.Errorf("append: %w", syscall.ENOSPC) }},
		{name: "device EDQUOT", export: "vol", typ: cmdWriteZeroes, flags: cmdFlagNoHole, length: 4096, want: errNoSpc,
			fail: func(string, int64, int64) error { return &os.PathError{Op: "write", Path: "x", Err: syscall.EDQUOT} }},
		{name: "device failure on read", export: "vol", typ: cmdRead, length: 4096, want: errIO,
			fail: func(string, int64, int64) error { return fmt.Errorf("layer 3: %w", errFail) }},
		{name: "device failure on flush", export: "vol", typ: cmdFlush, want: errIO,
			fail: func(string, int64, int64) error { return errFail }},
		{name: "device failure on block status", export: "vol", typ: cmdBlockStatus, length: 4096, want: errIO,
			fail: func(string, int64, int64) error { return errFail }},
		{name: "device panic", export: "vol", typ: cmdTrim, length: 4096, want: errIO,
			fail: func(string, int64, int64) error { panic("bug") }},
	}
	for _, structured := range []bool{false, true} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/structured=%v", tt.name, structured), func(t *testing.T) {
				t.Parallel()
				e, rw, _ := memExports(t)
				ts := startServer(t, e, Options{})
				tc := connect(t, ts.sock, tt.export, true)
				if !structured {
					tc = newTestClient(t, dialUnix(t, ts.sock))
					tc.goExport(tt.export)
				}
				if tt.typ == cmdBlockStatus && !structured {
					tt.want = errInval // no metadata context without structured replies
				}
				var payload []byte
				if tt.typ == cmdWrite {
					payload = make([]byte, tt.length)
				}
				rw.setFail(tt.fail)
				r := tc.do(tt.typ, tt.flags, tt.off, tt.length, payload)
				if r.errno != tt.want {
					t.Fatalf("errno %s (%q), want %s", errnoName(r.errno), r.msg, errnoName(tt.want))
				}
				if structured && r.msg == "" {
					t.Errorf("structured error without a message")
				}
				rw.setFail(nil)
				// The connection stays up.
				if r := tc.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 || len(r.data) != 4096 {
					t.Fatalf("read after error: errno %d, %d bytes", r.errno, len(r.data))
				}
				tc.disconnect()
			})
		}
	}
}

// TestWriteRead pipelines writes and reads of assorted sizes and checks
// the data, in both reply modes.
func TestWriteRead(t *testing.T) {
	t.Parallel()
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			t.Parallel()
			e, rw, _ := memExports(t)
			ts := startServer(t, e, Options{})
			tc := connect(t, ts.sock, "vol", structured)
			sizes := []uint32{1, 511, 4096, 65536, 1 << 20, 3<<20 + 7}
			want := make([]byte, rw.Size())
			off := uint64(100)
			for i, n := range sizes {
				p := pattern(uint64(i), int(n))
				copy(want[off:], p)
				tc.send(cmdWrite, 0, off, n, p)
				off += uint64(n) + 4096
			}
			for range sizes {
				if r := tc.recv(); r.errno != 0 {
					t.Fatalf("write %d: errno %d", r.handle, r.errno)
				}
			}
			handles := map[uint64][2]uint64{}
			for o := uint64(0); o < off; o += 1 << 20 {
				n := min(1<<20, off-o)
				handles[tc.send(cmdRead, 0, o, uint32(n), nil)] = [2]uint64{o, n}
			}
			for range handles {
				r := tc.recv()
				span := handles[r.handle]
				if r.errno != 0 || !bytes.Equal(r.data, want[span[0]:span[0]+span[1]]) {
					t.Fatalf("read [%d,+%d): errno %d, data mismatch", span[0], span[1], r.errno)
				}
			}
			if r := tc.do(cmdRead, 0, 0, 0, nil); r.errno != 0 || len(r.data) != 0 {
				t.Fatalf("zero-length read: errno %d, %d bytes", r.errno, len(r.data))
			}
			tc.disconnect()
		})
	}
}

// shortVolume's reads fill only the first half of the buffer and end
// with io.EOF while short is set, as a device shrunk under a reader might.
type shortVolume struct {
	*memVolume
	short atomic.Bool
}

func (v *shortVolume) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if !v.short.Load() {
		return v.memVolume.ReadAt(ctx, p, off)
	}
	n, err := v.memVolume.ReadAt(ctx, p[:len(p)/2], off)
	if err == nil {
		err = io.EOF
	}
	return n, err
}

// The bytes a short read leaves unfilled go out as zeros, never as what
// the pooled reply buffer held before (another request's data).
func TestShortReadZeroed(t *testing.T) {
	t.Parallel()
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			t.Parallel()
			dev := &shortVolume{memVolume: newMemVolume("short", 1<<20)}
			_, tc := serveOne(t, dev, Options{}, structured)
			const n = 8192
			data := pattern(7, n)
			for i := range data {
				data[i] |= 1 // no zero byte, so a stale one shows
			}
			if r := tc.do(cmdWrite, 0, 0, n, data); r.errno != 0 {
				t.Fatalf("write: errno %d", r.errno)
			}
			want := append(slices.Clone(data[:n/2]), make([]byte, n/2)...)
			for range 20 {
				dev.short.Store(false)
				if r := tc.do(cmdRead, 0, 0, n, nil); r.errno != 0 || !bytes.Equal(r.data, data) {
					t.Fatalf("full read: errno %d, data mismatch", r.errno)
				}
				dev.short.Store(true)
				r := tc.do(cmdRead, 0, 0, n, nil)
				if r.errno != 0 || !bytes.Equal(r.data, want) {
					t.Fatalf("short read: errno %d, want the first half then zeros; %d of the last %d bytes are not zero",
						r.errno, n/2-bytes.Count(r.data[min(len(r.data), n/2):], []byte{0}), n/2)
				}
			}
			tc.disconnect()
		})
	}
}

// gateVolume blocks reads at one offset until released, to force replies
// out of order, and counts the bytes inside WriteAt.
type gateVolume struct {
	*memVolume
	gateOff int64
	entered chan struct{}
	release chan struct{}

	mu       sync.Mutex
	inWrite  int64
	peak     int64
	inWriteC chan int64
}

func (g *gateVolume) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off == g.gateOff {
		g.entered <- struct{}{}
		<-g.release
	}
	return g.memVolume.ReadAt(ctx, p, off)
}

func (g *gateVolume) WriteAt(ctx context.Context, p []byte, off int64, f blockdev.WriteFlags) (int, error) {
	// Counted by capacity: the memory the payload's buffer holds.
	g.mu.Lock()
	g.inWrite += int64(cap(p))
	g.peak = max(g.peak, g.inWrite)
	in := g.inWrite
	g.mu.Unlock()
	if g.inWriteC != nil {
		g.inWriteC <- in
		<-g.release
	}
	n, err := g.memVolume.WriteAt(ctx, p, off, f)
	g.mu.Lock()
	g.inWrite -= int64(cap(p))
	g.mu.Unlock()
	return n, err
}

func TestOutOfOrderReplies(t *testing.T) {
	t.Parallel()
	g := &gateVolume{memVolume: newMemVolume("vol", 1<<20), gateOff: 0, entered: make(chan struct{}), release: make(chan struct{})}
	_, tc := serveOne(t, g, Options{}, true)
	slow := tc.send(cmdRead, 0, 0, 4096, nil)
	<-g.entered // the first read is inside the device
	fast := tc.send(cmdRead, 0, 8192, 4096, nil)
	if r := tc.recv(); r.handle != fast {
		t.Fatalf("first reply for handle %d, want the second request's %d", r.handle, fast)
	}
	close(g.release)
	if r := tc.recv(); r.handle != slow || r.errno != 0 {
		t.Fatalf("second reply: handle %d errno %d, want %d", r.handle, r.errno, slow)
	}
	tc.disconnect()
}

// TestInFlightCap checks the reader stops taking writes while the
// buffers of their payloads in the device reach MaxInFlightBytes. A
// payload just over a power of two takes a buffer of the next class, twice
// its length: before, the cap counted lengths, and let twice the memory be
// held.
func TestInFlightCap(t *testing.T) {
	t.Parallel()
	for _, wsize := range []int{1 << 20, 1<<20 + 4096} {
		t.Run(fmt.Sprint(wsize), func(t *testing.T) {
			t.Parallel()
			testInFlightCap(t, wsize)
		})
	}
}

func testInFlightCap(t *testing.T, wsize int) {
	const limit = 32 << 20
	unit := int64(classCap(sizeClass(wsize))) // one payload's buffer
	g := &gateVolume{memVolume: newMemVolume("vol", 128<<20), gateOff: -1, release: make(chan struct{}), inWriteC: make(chan int64)}
	// More workers than the cap has room for, so only the cap limits.
	_, tc := serveOne(t, g, Options{Workers: 64, MaxInFlightBytes: limit}, false)
	const n = 64
	payload := make([]byte, wsize)
	go func() {
		for i := range n {
			tc.send(cmdWrite, 0, uint64(i*wsize), uint32(wsize), payload)
		}
	}()
	// Wait until writes filling the cap are inside the device.
	for in := int64(0); in+unit <= limit; {
		in = <-g.inWriteC
	}
	// Drain the rest until the replies are in. Closing inWriteC instead
	// would race, for the race detector, with the sends of the device
	// calls, whose order before the replies goes through the socket.
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-g.inWriteC:
			case <-done:
				return
			}
		}
	}()
	// A reader that ignored the cap would now take more writes into the
	// device; give it the time to show it.
	time.Sleep(200 * time.Millisecond)
	close(g.release)
	for range n {
		if r := tc.recv(); r.errno != 0 {
			t.Fatalf("write: errno %d", r.errno)
		}
	}
	g.mu.Lock()
	peak := g.peak
	g.mu.Unlock()
	if peak > limit {
		t.Fatalf("payload buffers of %d bytes in flight at once, cap %d", peak, limit)
	}
	tc.disconnect()
}

// serveHeldWrites serves a 1 MiB volume whose writes are held until open
// is called (at the latest 10 s on, which bounds a test whose server is
// stuck: the writes then end, and the order of the replies shows it),
// with one worker; each held write is announced on g.inWriteC, of room
// for inFlight of them.
func serveHeldWrites(t *testing.T, inFlight int) (g *gateVolume, tc *testClient, open func()) {
	t.Helper()
	g = &gateVolume{memVolume: newMemVolume("vol", 1<<20), gateOff: -1, release: make(chan struct{}), inWriteC: make(chan int64, inFlight)}
	_, tc = serveOne(t, g, Options{Workers: 1}, false)
	var once sync.Once
	open = func() { once.Do(func() { close(g.release) }) }
	t.Cleanup(open)
	stuck := time.AfterFunc(10*time.Second, open)
	t.Cleanup(func() { stuck.Stop() })
	return g, tc, open
}

// TestRepliesFlowWhileWritesStall: with every takeover of a connection in
// a stalled device call (a hold's closed write gate), reads still get
// their replies. Before, the next inline write ran on the reader, which
// then read no request and sent none of the finished replies until the
// device returned.
func TestRepliesFlowWhileWritesStall(t *testing.T) {
	t.Parallel()
	g, tc, open := serveHeldWrites(t, 4)
	payload := make([]byte, 4096)
	w1 := tc.send(cmdWrite, 0, 0, 4096, payload)
	<-g.inWriteC // w1 keeps the reader; a takeover reads on
	w2 := tc.send(cmdWrite, 0, 4096, 4096, payload)
	<-g.inWriteC // every takeover the connection may make is in use
	rd := tc.send(cmdRead, 0, 8192, 4096, nil)
	if r := tc.recv(); r.handle != rd || r.errno != 0 {
		t.Fatalf("first reply: handle %d errno %d, want the read's (%d) while writes %d and %d stall", r.handle, r.errno, rd, w1, w2)
	}
	open()
	for range 2 {
		if r := tc.recv(); r.errno != 0 {
			t.Fatalf("write: errno %d", r.errno)
		}
	}
	tc.disconnect()
}

// TestReadsFlowPastQueuedWrites: with every worker in a held write and
// their queue full, more write-type requests (writes, FUA writes, trims)
// do not keep the reader: a read sent after them is answered while they
// wait. Before, the reader blocked on the full queue and no later request
// was read until the writes ended (a hold lasts up to a minute).
func TestReadsFlowPastQueuedWrites(t *testing.T) {
	t.Parallel()
	g, tc, open := serveHeldWrites(t, 64)
	payload := make([]byte, 4096)
	tc.send(cmdWrite, 0, 0, 4096, payload)
	<-g.inWriteC // the first keeps the reader; a takeover reads on
	tc.send(cmdWrite, 0, 4096, 4096, payload)
	<-g.inWriteC // every takeover and the worker are in use
	n := 2
	for i := range 6 { // the queue's room, then more
		tc.send(cmdWrite, cmdFlagFUA, uint64(8192+4096*i), 4096, payload)
		n++
	}
	trim := tc.send(cmdTrim, 0, 65536, 4096, nil) // not held: it may answer first
	n++
	rd := tc.send(cmdRead, 0, 131072, 4096, nil)
	for {
		r := tc.recv()
		if r.handle == trim {
			n--
			continue
		}
		if r.handle != rd || r.errno != 0 {
			t.Fatalf("reply: handle %d errno %d, want the read's (%d) while the writes are held", r.handle, r.errno, rd)
		}
		break
	}
	open()
	for range n {
		if r := tc.recv(); r.errno != 0 {
			t.Fatalf("write: errno %d", r.errno)
		}
	}
	tc.disconnect()
}
