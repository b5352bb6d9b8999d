package nbd

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/strata-block/strata/blockdev"
)

// TestFlushFUAAcrossConnections checks durability through the model
// device: a write is durable after a FLUSH on another connection to the
// same export (multi-conn), or at once with FUA; TRIM and WRITE_ZEROES
// with FUA are durable too.
func TestFlushFUAAcrossConnections(t *testing.T) {
	t.Parallel()
	e, rw, _ := memExports(t)
	ts := startServer(t, e, Options{})
	a := connect(t, ts.sock, "vol", true)
	b := connect(t, ts.sock, "vol", false)
	if a.flags&flagCanMultiConn == 0 {
		t.Fatalf("flags %#x lack CAN_MULTI_CONN", a.flags)
	}
	p := pattern(1, 8192)
	if r := a.do(cmdWrite, 0, 4096, 8192, p); r.errno != 0 {
		t.Fatalf("write: %d", r.errno)
	}
	if bytes.Equal(rw.durableAt(4096, 8192), p) {
		t.Fatalf("write durable before any flush: the model does not test anything")
	}
	if r := b.do(cmdFlush, 0, 0, 0, nil); r.errno != 0 {
		t.Fatalf("flush: %d", r.errno)
	}
	if !bytes.Equal(rw.durableAt(4096, 8192), p) {
		t.Fatalf("write on connection A not durable after FLUSH on connection B")
	}

	p2 := pattern(2, 4096)
	if r := b.do(cmdWrite, cmdFlagFUA, 1<<20, 4096, p2); r.errno != 0 {
		t.Fatalf("FUA write: %d", r.errno)
	}
	if !bytes.Equal(rw.durableAt(1<<20, 4096), p2) {
		t.Fatalf("FUA write not durable on reply")
	}
	if r := a.do(cmdTrim, cmdFlagFUA, 1<<20, 4096, nil); r.errno != 0 {
		t.Fatalf("FUA trim: %d", r.errno)
	}
	if !bytes.Equal(rw.durableAt(1<<20, 4096), make([]byte, 4096)) {
		t.Fatalf("FUA trim not durable on reply")
	}
	if r := a.do(cmdWriteZeroes, cmdFlagFUA|cmdFlagNoHole|cmdFlagFastZero, 4096, 4096, nil); r.errno != 0 {
		t.Fatalf("FUA fast write zeroes: %d", r.errno)
	}
	if !bytes.Equal(rw.durableAt(4096, 4096), make([]byte, 4096)) {
		t.Fatalf("FUA write zeroes not durable on reply")
	}
	a.disconnect()
	b.disconnect()
}

// TestDisconnectFlushes checks the export is flushed when a client that
// wrote disconnects without FLUSH.
func TestDisconnectFlushes(t *testing.T) {
	t.Parallel()
	e, rw, _ := memExports(t)
	ts := startServer(t, e, Options{})
	tc := connect(t, ts.sock, "vol", false)
	p := pattern(3, 4096)
	if r := tc.do(cmdWrite, 0, 0, 4096, p); r.errno != 0 {
		t.Fatalf("write: %d", r.errno)
	}
	tc.disconnect()
	ts.stop(t) // Shutdown waits for the connection to end
	if !bytes.Equal(rw.durableAt(0, 4096), p) {
		t.Fatalf("write not flushed at disconnect")
	}
}

// TestZeroTrimBlockStatus checks WRITE_ZEROES, TRIM, sparse reads and
// BLOCK_STATUS against the device's extents.
func TestZeroTrimBlockStatus(t *testing.T) {
	t.Parallel()
	e, _, _ := memExports(t)
	ts := startServer(t, e, Options{})
	tc := connect(t, ts.sock, "vol", true)
	const mib = 1 << 20
	steps := []struct {
		typ, flags uint16
		off        uint64
		n          uint32
	}{
		{typ: cmdWrite, off: 0, n: 2 * mib},
		{typ: cmdWriteZeroes, flags: cmdFlagNoHole, off: 256 << 10, n: 256 << 10}, // allocated zeros
		{typ: cmdWriteZeroes, off: 1 * mib, n: 128 << 10},                         // may punch: a hole
		{typ: cmdTrim, off: 1536 << 10, n: 64 << 10},
		{typ: cmdWriteZeroes, flags: cmdFlagNoHole, off: 100, n: 200}, // partial block: data zeros
	}
	model := pattern(4, 2*mib)
	for _, s := range steps {
		var payload []byte
		if s.typ == cmdWrite {
			payload = model[s.off : s.off+uint64(s.n)]
		} else {
			clear(model[s.off : s.off+uint64(s.n)])
		}
		if r := tc.do(s.typ, s.flags, s.off, s.n, payload); r.errno != 0 {
			t.Fatalf("%s [%d,+%d): errno %d", cmdName(s.typ), s.off, s.n, r.errno)
		}
	}
	const d, z, h = 0, stateZero, stateHole | stateZero
	want := [][2]uint32{
		{256 << 10, d}, {256 << 10, z}, {512 << 10, d}, {128 << 10, h}, {384 << 10, d}, {64 << 10, h}, {448 << 10, d}, {2 * mib, h},
	}
	r := tc.do(cmdBlockStatus, 0, 0, 4*mib, nil)
	if r.errno != 0 || fmt.Sprint(r.status) != fmt.Sprint(want) {
		t.Fatalf("block status: errno %d\n got %v\nwant %v", r.errno, r.status, want)
	}
	r = tc.do(cmdBlockStatus, cmdFlagReqOne, 300<<10, 4*mib, nil)
	if fmt.Sprint(r.status) != fmt.Sprint([][2]uint32{{212 << 10, z}}) {
		t.Fatalf("block status REQ_ONE: %v", r.status)
	}

	// A read over the holes and zero extents comes back in hole chunks,
	// and as one data chunk with DF.
	r = tc.do(cmdRead, 0, 0, 3*mib, nil)
	if r.errno != 0 || !bytes.Equal(r.data[:2*mib], model) || !bytes.Equal(r.data[2*mib:], make([]byte, mib)) {
		t.Fatalf("sparse read: errno %d, data mismatch", r.errno)
	}
	wantHoles := fmt.Sprint([][2]uint64{{256 << 10, 256 << 10}, {mib, 128 << 10}, {1536 << 10, 64 << 10}, {2 * mib, mib}})
	if fmt.Sprint(r.holes) != wantHoles {
		t.Fatalf("hole chunks %v, want %v", r.holes, wantHoles)
	}
	r = tc.do(cmdRead, cmdFlagDF, 0, 3*mib, nil)
	if r.errno != 0 || r.chunks != 1 || len(r.holes) != 0 || !bytes.Equal(r.data[:2*mib], model) {
		t.Fatalf("DF read: errno %d, %d chunks, %d holes", r.errno, r.chunks, len(r.holes))
	}
	tc.disconnect()
}

// TestShutdownDrains checks graceful shutdown: a request inside the
// device when Shutdown starts is answered, the export is flushed, and
// Serve returns ErrServerClosed.
func TestShutdownDrains(t *testing.T) {
	t.Parallel()
	g := &gateVolume{memVolume: newMemVolume("vol", 1<<20), gateOff: -1, release: make(chan struct{}), inWriteC: make(chan int64)}
	ts, tc := serveOne(t, g, Options{}, false)
	p := pattern(5, 4096)
	h := tc.send(cmdWrite, 0, 0, 4096, p)
	<-g.inWriteC // the write is inside the device
	stopped := make(chan error, 1)
	go func() { stopped <- ts.srv.Shutdown(context.Background()) }()
	close(g.release)
	if r := tc.recv(); r.handle != h || r.errno != 0 {
		t.Fatalf("in-flight write during shutdown: handle %d errno %d", r.handle, r.errno)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if !bytes.Equal(g.durableAt(0, 4096), p) {
		t.Fatalf("export not flushed by shutdown")
	}
	if _, err := net.Dial("unix", ts.sock); err == nil {
		t.Fatalf("server still accepting after Shutdown")
	}
	ts.stop(t)
}

// TestShutdownDeadline checks Shutdown gives up on a stuck request when
// its context ends and reports it.
func TestShutdownDeadline(t *testing.T) {
	t.Parallel()
	g := &gateVolume{memVolume: newMemVolume("vol", 1<<20), gateOff: 0, entered: make(chan struct{}), release: make(chan struct{})}
	ts, tc := serveOne(t, g, Options{}, false)
	tc.send(cmdRead, 0, 0, 4096, nil)
	<-g.entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ts.srv.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown with a done context: %v, want context.Canceled", err)
	}
	close(g.release) // the device call completes; its reply finds the connection closed
	ts.stop(t)
}

// writeTestCerts writes a CA, a server certificate for localhost and a
// client certificate, in the file names libnbd and nbdkit expect.
func writeTestCerts(t testing.TB, dir string) (server *tls.Config, client *tls.Config) {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	now := time.Now()
	caKey := key()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "strata test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage) (tls.Certificate, []byte, []byte) {
		k := key()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return pair, certPEM, keyPEM
	}
	srvPair, srvCert, srvKey := issue(2, "localhost", x509.ExtKeyUsageServerAuth)
	cliPair, cliCert, cliKey := issue(3, "client", x509.ExtKeyUsageClientAuth)
	files := map[string][]byte{
		"ca-cert.pem":     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		"server-cert.pem": srvCert, "server-key.pem": srvKey,
		"client-cert.pem": cliCert, "client-key.pem": cliKey,
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	server = &tls.Config{Certificates: []tls.Certificate{srvPair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
	client = &tls.Config{Certificates: []tls.Certificate{cliPair}, RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	return server, client
}

func TestTLS(t *testing.T) {
	t.Parallel()
	e, _, _ := memExports(t)
	srvCfg, cliCfg := writeTestCerts(t, t.TempDir())
	ts := startServer(t, e, Options{TLSConfig: srvCfg, RequireTLS: true})

	tc := newTestClient(t, dialUnix(t, ts.sock))
	for _, opt := range []uint32{optList, optInfo, optGo, optStructuredReply, 99} {
		if r := tc.option(opt, nil); r[0].typ != repErrTLSReqd {
			t.Fatalf("option %d before TLS: reply %#x, want NBD_REP_ERR_TLS_REQD", opt, r[0].typ)
		}
	}
	tc.startTLS(cliCfg)
	if r := tc.option(optStartTLS, nil); r[0].typ != repErrInvalid {
		t.Fatalf("second STARTTLS: %#x, want NBD_REP_ERR_INVALID", r[0].typ)
	}
	if r := tc.option(optList, nil); r[len(r)-1].typ != repAck || len(r) != 3 {
		t.Fatalf("LIST over TLS: %+v", r)
	}
	tc.goExport("vol")
	p := pattern(6, 65536)
	if r := tc.do(cmdWrite, 0, 0, 65536, p); r.errno != 0 {
		t.Fatalf("write over TLS: %d", r.errno)
	}
	if r := tc.do(cmdRead, 0, 0, 65536, nil); r.errno != 0 || !bytes.Equal(r.data, p) {
		t.Fatalf("read over TLS: errno %d, mismatch", r.errno)
	}
	tc.disconnect()

	// A client without a certificate fails the handshake; the server
	// closes that connection and keeps serving.
	bad := newTestClient(t, dialUnix(t, ts.sock))
	bad.option(optStartTLS, nil)
	c := tls.Client(bad.conn, &tls.Config{RootCAs: cliCfg.RootCAs, ServerName: "localhost"})
	if err := c.Handshake(); err == nil {
		buf := make([]byte, 1)
		if _, err := c.Read(buf); err == nil {
			t.Fatalf("TLS without a client certificate accepted")
		}
	}
}

// failingListener fails its first n Accepts with err, then accepts.
type failingListener struct {
	net.Listener
	n   atomic.Int32
	err error
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.n.Add(-1) >= 0 {
		return nil, l.err
	}
	return l.Listener.Accept()
}

// TestAcceptErrorsPass: an accept error other than a closed listener
// (out of descriptors: EMFILE, not a timeout) is retried, and the server
// goes on serving. Before, Serve returned on it, and the agent shut down
// with its listener.
func TestAcceptErrorsPass(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "nbdt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "nbd.sock")
	ul, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	l := &failingListener{Listener: ul, err: &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", syscall.EMFILE)}}
	l.n.Store(3)
	exports, _, _ := memExports(t)
	srv, err := NewServer(exports, Options{Logger: slog.New(slog.NewTextHandler(testLogWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), l) }()
	tc := connect(t, sock, "vol", true)
	if r := tc.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("read after accept errors: errno %d", r.errno)
	}
	tc.disconnect()
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve returned %v, want ErrServerClosed", err)
	}
}

// fragmentedVolume is a device whose extents alternate data and hole
// every 4 KiB; it records the longest range it was asked about.
type fragmentedVolume struct {
	nullVolume
	longest atomic.Int64
}

func (f *fragmentedVolume) Name() string { return "frag" }

func (f *fragmentedVolume) Extents(_ context.Context, off, length int64) ([]blockdev.Extent, error) {
	for {
		old := f.longest.Load()
		if length <= old || f.longest.CompareAndSwap(old, length) {
			break
		}
	}
	var out []blockdev.Extent
	for b := off &^ 4095; b < off+length; b += 4096 {
		k := blockdev.ExtentData
		if b/4096%2 == 1 {
			k = blockdev.ExtentHole
		}
		s, e := max(b, off), min(b+4096, off+length)
		out = append(out, blockdev.Extent{Offset: s, Length: e - s, Kind: k})
	}
	return out, nil
}

// TestBlockStatusBoundedExtents: a BLOCK_STATUS over 4 GiB of a volume
// fragmented in 4 KiB pieces asks the device a window at a time, not for
// a million extents at once, and still answers the most descriptors a
// reply holds, in order. Before, Extents was asked for the whole range.
func TestBlockStatusBoundedExtents(t *testing.T) {
	t.Parallel()
	f := &fragmentedVolume{nullVolume: nullVolume{size: 8 << 30}}
	_, tc := serveOne(t, f, Options{}, true)
	r := tc.do(cmdBlockStatus, 0, 4096, 0xFFFFF000, nil)
	if r.errno != 0 || len(r.status) != maxDescriptors {
		t.Fatalf("block status: errno %d, %d descriptors, want %d", r.errno, len(r.status), maxDescriptors)
	}
	for i, d := range r.status {
		want := uint32(0)
		if i%2 == 0 { // from 4096: a hole first
			want = stateHole | stateZero
		}
		if d[0] != 4096 || d[1] != want {
			t.Fatalf("descriptor %d: %v, want 4096 bytes of state %d", i, d, want)
		}
	}
	if got := f.longest.Load(); got > blockStatusWindow {
		t.Errorf("the device was asked about %d bytes at once, want at most %d", got, blockStatusWindow)
	}
	if r := tc.do(cmdBlockStatus, cmdFlagReqOne, 0, 0xFFFFF000, nil); len(r.status) != 1 || r.status[0] != [2]uint32{4096, 0} {
		t.Errorf("block status REQ_ONE: %v", r.status)
	}
	tc.disconnect()
}

// TestStuckClientClosed: a client that stops reading its replies is cut
// off after ReplyTimeout, which ends its hold on the export; another
// connection to the same export goes on. Before, the connection stayed
// until the client disconnected.
func TestStuckClientClosed(t *testing.T) {
	t.Parallel()
	e := NewMapExports()
	if err := e.Add(newMemVolume("vol", 64<<20), ""); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, e, Options{ReplyTimeout: 200 * time.Millisecond})
	stuck := connect(t, ts.sock, "vol", false)
	live := connect(t, ts.sock, "vol", false)
	// 48 MiB of replies: far past what the socket buffers hold.
	for i := range 48 {
		stuck.send(cmdRead, 0, uint64(i)<<20, 1<<20, nil)
	}
	conns := func() int {
		ts.srv.mu.Lock()
		defer ts.srv.mu.Unlock()
		return len(ts.srv.conns)
	}
	deadline := time.Now().Add(10 * time.Second)
	for conns() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections 10 s after the client stopped reading, want the stuck one closed", conns())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r := live.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("read on the other connection: errno %d", r.errno)
	}
	live.disconnect()
	_ = stuck.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	// The replies sent, then EOF, or a reset: the server closed with
	// requests of ours unread.
	if _, err := io.Copy(io.Discard, stuck.br); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("stuck client: %v, want the connection closed by the server", err)
	}
}

// TestConnectionCap: at MaxConnections in transmission, NBD_OPT_GO is
// refused with a message saying why (handshakes do not count), and the
// same client gets in once a connection ends.
func TestConnectionCap(t *testing.T) {
	t.Parallel()
	e, _, _ := memExports(t)
	ts := startServer(t, e, Options{MaxConnections: 2})
	waiting := newTestClient(t, dialUnix(t, ts.sock)) // in negotiation: not counted
	first := connect(t, ts.sock, "vol", false)
	connect(t, ts.sock, "vol@snap", false)
	reps := waiting.option(optGo, infoData("vol"))
	if last := reps[len(reps)-1]; last.typ != repErrPolicy || !strings.Contains(string(last.data), "too many connections") {
		t.Fatalf("GO past a cap of 2: reply %#x %q, want NBD_REP_ERR_POLICY saying too many connections", last.typ, last.data)
	}
	first.disconnect()
	waiting.goExport("vol")
	if r := waiting.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("read once a connection ended: errno %d", r.errno)
	}
}

// TestSlowReaderNotCut: a client that reads a 32 MiB reply slowly, but
// without stopping, is not taken for one that stopped reading: the reply
// goes out in pieces, each one progress. Before, the whole reply was one
// write, and a reply taking longer than ReplyTimeout cut the connection.
func TestSlowReaderNotCut(t *testing.T) {
	t.Parallel()
	e := NewMapExports()
	vol := newMemVolume("vol", 64<<20)
	if err := e.Add(vol, ""); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, e, Options{ReplyTimeout: 2 * time.Second})
	tc := connect(t, ts.sock, "vol", false)
	h := tc.send(cmdRead, 0, 0, MaxPayload, nil)
	// About 3.2 s for the reply: 1 MiB every 100 ms.
	var head [16]byte
	if _, err := io.ReadFull(tc.br, head[:]); err != nil {
		t.Fatalf("reply header: %v", err)
	}
	if got := binary.BigEndian.Uint64(head[8:16]); got != h {
		t.Fatalf("reply for handle %d, want %d", got, h)
	}
	buf := make([]byte, 1<<20)
	for i := range MaxPayload >> 20 {
		time.Sleep(100 * time.Millisecond)
		if _, err := io.ReadFull(tc.br, buf); err != nil {
			t.Fatalf("reading the reply slowly, MiB %d: %v (the server cut the connection)", i, err)
		}
	}
	if r := tc.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("read after the slow reply: errno %d", r.errno)
	}
	tc.disconnect()
}
