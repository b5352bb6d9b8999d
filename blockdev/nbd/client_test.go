package nbd

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
)

// testClient is a minimal NBD client written for the tests: it speaks
// fixed newstyle negotiation and pipelines transmission requests.
type testClient struct {
	t          testing.TB
	conn       net.Conn
	br         *bufio.Reader
	structured bool
	size       uint64
	flags      uint16

	wmu     sync.Mutex
	mu      sync.Mutex
	pending map[uint64]readReq // reads in flight by handle
	next    uint64
}

// readReq is a read in flight.
type readReq struct {
	off uint64
	n   uint32
}

// optReply is one negotiation reply.
type optReply struct {
	typ  uint32
	data []byte
}

// reply is one transmission reply, with structured chunks assembled.
type reply struct {
	handle uint64
	errno  uint32
	msg    string
	data   []byte      // READ: the data, holes filled with zeros
	holes  [][2]uint64 // READ: hole chunks (offset, length)
	chunks int
	status [][2]uint32 // BLOCK_STATUS: (length, flags) descriptors
}

func dialUnix(t testing.TB, sock string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newTestClient does the greeting over conn.
func newTestClient(t testing.TB, conn net.Conn) *testClient {
	t.Helper()
	tc := &testClient{t: t, conn: conn, br: bufio.NewReader(conn), pending: make(map[uint64]readReq)}
	var hello [18]byte
	tc.readFull(hello[:])
	if binary.BigEndian.Uint64(hello[0:8]) != magicNBD || binary.BigEndian.Uint64(hello[8:16]) != magicOption {
		t.Fatalf("bad greeting % x", hello)
	}
	if f := binary.BigEndian.Uint16(hello[16:]); f != handshakeFixedNewstyle|handshakeNoZeroes {
		t.Fatalf("handshake flags %#x", f)
	}
	tc.writeAll(binary.BigEndian.AppendUint32(nil, clientFixedNewstyle|clientNoZeroes))
	return tc
}

func (tc *testClient) readFull(b []byte) {
	tc.t.Helper()
	if _, err := io.ReadFull(tc.br, b); err != nil {
		tc.t.Fatalf("read from server: %v", err)
	}
}

func (tc *testClient) writeAll(b []byte) {
	tc.t.Helper()
	tc.wmu.Lock()
	defer tc.wmu.Unlock()
	if _, err := tc.conn.Write(b); err != nil {
		tc.t.Fatalf("write to server: %v", err)
	}
}

// option sends an option and returns its replies up to the final one.
func (tc *testClient) option(opt uint32, data []byte) []optReply {
	tc.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	tc.writeAll(append(b, data...))
	var out []optReply
	for {
		var h [20]byte
		tc.readFull(h[:])
		if m := binary.BigEndian.Uint64(h[0:8]); m != magicOptionReply {
			tc.t.Fatalf("option reply magic %#x", m)
		}
		if o := binary.BigEndian.Uint32(h[8:12]); o != opt {
			tc.t.Fatalf("reply for option %d, want %d", o, opt)
		}
		r := optReply{typ: binary.BigEndian.Uint32(h[12:16]), data: make([]byte, binary.BigEndian.Uint32(h[16:20]))}
		tc.readFull(r.data)
		out = append(out, r)
		if r.typ == repAck || r.typ&(1<<31) != 0 {
			return out
		}
	}
}

// infoData encodes NBD_OPT_INFO/GO data.
func infoData(name string, reqs ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(reqs)))
	for _, r := range reqs {
		b = binary.BigEndian.AppendUint16(b, r)
	}
	return b
}

// metaData encodes NBD_OPT_LIST/SET_META_CONTEXT data.
func metaData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// startTLS upgrades the connection.
func (tc *testClient) startTLS(cfg *tls.Config) {
	tc.t.Helper()
	if r := tc.option(optStartTLS, nil); r[len(r)-1].typ != repAck {
		tc.t.Fatalf("STARTTLS: reply %#x %q", r[len(r)-1].typ, r[len(r)-1].data)
	}
	c := tls.Client(tc.conn, cfg)
	if err := c.Handshake(); err != nil {
		tc.t.Fatalf("TLS handshake: %v", err)
	}
	tc.conn, tc.br = c, bufio.NewReader(c)
}

// goExport enters transmission on name; it fails the test unless the
// server accepts.
func (tc *testClient) goExport(name string) {
	tc.t.Helper()
	reps := tc.option(optGo, infoData(name, infoBlockSize))
	if last := reps[len(reps)-1]; last.typ != repAck {
		tc.t.Fatalf("GO %q: reply %#x %q", name, last.typ, last.data)
	}
	for _, r := range reps {
		if r.typ == repInfo && binary.BigEndian.Uint16(r.data) == infoExport {
			tc.size = binary.BigEndian.Uint64(r.data[2:10])
			tc.flags = binary.BigEndian.Uint16(r.data[10:12])
		}
	}
}

// connect dials sock and enters transmission on name, with structured
// replies and base:allocation when structured is set.
func connect(t testing.TB, sock, name string, structured bool) *testClient {
	t.Helper()
	tc := newTestClient(t, dialUnix(t, sock))
	if structured {
		if r := tc.option(optStructuredReply, nil); r[0].typ != repAck {
			t.Fatalf("STRUCTURED_REPLY: %#x", r[0].typ)
		}
		tc.structured = true
		if r := tc.option(optSetMetaContext, metaData(name, metaBaseAllocation)); r[len(r)-1].typ != repAck || len(r) != 2 {
			t.Fatalf("SET_META_CONTEXT: %+v", r)
		}
	}
	tc.goExport(name)
	return tc
}

// send queues a request and returns its handle.
func (tc *testClient) send(typ, flags uint16, off uint64, length uint32, payload []byte) uint64 {
	tc.t.Helper()
	tc.mu.Lock()
	tc.next++
	h := tc.next
	if typ == cmdRead {
		tc.pending[h] = readReq{off: off, n: length}
	}
	tc.mu.Unlock()
	b := make([]byte, requestHeaderSize, requestHeaderSize+len(payload))
	binary.BigEndian.PutUint32(b[0:4], magicRequest)
	binary.BigEndian.PutUint16(b[4:6], flags)
	binary.BigEndian.PutUint16(b[6:8], typ)
	binary.BigEndian.PutUint64(b[8:16], h)
	binary.BigEndian.PutUint64(b[16:24], off)
	binary.BigEndian.PutUint32(b[24:28], length)
	tc.writeAll(append(b, payload...))
	return h
}

// recv reads one complete reply (all chunks of a structured one; chunks
// of different requests are not interleaved by this server).
func (tc *testClient) recv() reply {
	tc.t.Helper()
	var m [4]byte
	tc.readFull(m[:])
	switch binary.BigEndian.Uint32(m[:]) {
	case magicSimpleReply:
		var h [12]byte
		tc.readFull(h[:])
		r := reply{errno: binary.BigEndian.Uint32(h[0:4]), handle: binary.BigEndian.Uint64(h[4:12])}
		tc.mu.Lock()
		rr, isRead := tc.pending[r.handle]
		delete(tc.pending, r.handle)
		tc.mu.Unlock()
		if isRead && r.errno == 0 {
			r.data = make([]byte, rr.n)
			tc.readFull(r.data)
		}
		return r
	case magicStructuredReply:
		return tc.recvStructured()
	default:
		tc.t.Fatalf("reply magic % x", m)
		return reply{}
	}
}

func (tc *testClient) recvStructured() reply {
	tc.t.Helper()
	var r reply
	var rr readReq
	first := true
	for {
		if !first {
			var m [4]byte
			tc.readFull(m[:])
			if binary.BigEndian.Uint32(m[:]) != magicStructuredReply {
				tc.t.Fatalf("chunk magic % x", m)
			}
		}
		var h [16]byte
		tc.readFull(h[:])
		flags, typ := binary.BigEndian.Uint16(h[0:2]), binary.BigEndian.Uint16(h[2:4])
		handle := binary.BigEndian.Uint64(h[4:12])
		payload := make([]byte, binary.BigEndian.Uint32(h[12:16]))
		tc.readFull(payload)
		if !first && handle != r.handle {
			tc.t.Fatalf("chunk for handle %d inside reply %d", handle, r.handle)
		}
		r.handle = handle
		if first {
			tc.mu.Lock()
			if p, ok := tc.pending[handle]; ok {
				rr = p
				r.data = make([]byte, p.n)
			}
			tc.mu.Unlock()
			first = false
		}
		r.chunks++
		switch typ {
		case replyTypeNone:
		case replyTypeOffsetData:
			off := binary.BigEndian.Uint64(payload[0:8])
			if off < rr.off || off-rr.off+uint64(len(payload)-8) > uint64(len(r.data)) {
				tc.t.Fatalf("data chunk [%d,+%d) outside read [%d,+%d)", off, len(payload)-8, rr.off, rr.n)
			}
			copy(r.data[off-rr.off:], payload[8:])
		case replyTypeOffsetHole:
			off, n := binary.BigEndian.Uint64(payload[0:8]), binary.BigEndian.Uint32(payload[8:12])
			r.holes = append(r.holes, [2]uint64{off, uint64(n)})
		case replyTypeBlockStatus:
			if id := binary.BigEndian.Uint32(payload[0:4]); id != metaBaseAllocationID {
				tc.t.Fatalf("block status context %d", id)
			}
			for p := payload[4:]; len(p) >= 8; p = p[8:] {
				r.status = append(r.status, [2]uint32{binary.BigEndian.Uint32(p[0:4]), binary.BigEndian.Uint32(p[4:8])})
			}
		case replyTypeError:
			r.errno = binary.BigEndian.Uint32(payload[0:4])
			ml := binary.BigEndian.Uint16(payload[4:6])
			r.msg = string(payload[6 : 6+ml])
		default:
			tc.t.Fatalf("unexpected chunk type %d", typ)
		}
		if flags&replyFlagDone != 0 {
			tc.mu.Lock()
			delete(tc.pending, handle)
			tc.mu.Unlock()
			return r
		}
	}
}

// do sends one request and waits for its reply.
func (tc *testClient) do(typ, flags uint16, off uint64, length uint32, payload []byte) reply {
	tc.t.Helper()
	h := tc.send(typ, flags, off, length, payload)
	r := tc.recv()
	if r.handle != h {
		tc.t.Fatalf("reply for handle %d, want %d", r.handle, h)
	}
	return r
}

// disconnect sends NBD_CMD_DISC and waits for the server to close.
func (tc *testClient) disconnect() {
	tc.t.Helper()
	tc.send(cmdDisc, 0, 0, 0, nil)
	if n, err := io.Copy(io.Discard, tc.br); err != nil || n != 0 {
		tc.t.Fatalf("after DISC: %d bytes, %v; want a clean close", n, err)
	}
}
