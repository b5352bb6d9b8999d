package nbd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"
	"github.com/strata-block/strata/blockdev"
)

const (
	// maxOptionLen bounds one option's data; longer options close the
	// connection (the specification's strings are at most 4096 bytes).
	maxOptionLen = 64 << 10
	// maxNameLen is the specification's limit on a string.
	maxNameLen = 4096
	// ioBufSize is the connection's read buffer, large enough to take in
	// many request headers (and small write payloads) per system call.
	ioBufSize = 128 << 10
)

// serverConn is one client connection: option negotiation, then the
// transmission phase (transmit.go).
type serverConn struct {
	s   *Server
	raw net.Conn // as accepted
	nc  net.Conn // raw, or the TLS connection over it
	br  *bufio.Reader
	bw  *bufio.Writer // negotiation replies only
	log *slog.Logger

	// Negotiated state.
	tls        bool
	noZeroes   bool
	structured bool
	metaBase   bool   // base:allocation selected...
	metaExport string // ...for this export name

	// The export, once NBD_OPT_GO or NBD_OPT_EXPORT_NAME succeeded.
	name    string
	vol     blockdev.Volume
	release func()
	slot    bool // holds a place in transmission (Server.takeSlot)
	size    int64
	tflags  uint16

	// Transmission phase (transmit.go).
	reqs   chan *request
	wg     sync.WaitGroup
	budget budget
	wmu    sync.Mutex
	werr   error // sticky: the first failed reply write
	// A reply write in progress, and the count of those done: the
	// watchdog (Server.watch) reads them; wdSeen and wdSince are its own.
	writing atomic.Bool
	written atomic.Uint64
	// A piece of a large reply being written (writeSteps, under wmu):
	// piece is consumed by the write, pieceBuf keeps the array.
	piece    net.Buffers
	pieceBuf net.Buffers
	wdSeen   uint64
	wdSince  time.Time
	dirty    atomic.Bool // a write-type request succeeded since the last flush

	// The reader role: see transmit.go.
	readState  atomic.Uint64
	taken      atomic.Int32 // readers taken over and still in the device
	takeover   *time.Timer
	readEnd    chan error // the final reader's result, after a takeover
	batch      []*request // inline requests whose replies wait to be sent
	batchIOV   net.Buffers
	batchBytes int
}

func newServerConn(s *Server, nc net.Conn) *serverConn {
	return &serverConn{
		s:   s,
		raw: nc,
		nc:  nc,
		log: s.log.With("remote", nc.RemoteAddr().String()),
	}
}

// stopReading makes the connection's blocked or next read fail, so the
// connection drains and closes (graceful shutdown).
func (c *serverConn) stopReading() { _ = c.raw.SetReadDeadline(time.Unix(1, 0)) }

// serve runs the connection to its end and closes it.
func (c *serverConn) serve() {
	defer func() {
		if c.release != nil {
			c.release()
		}
		c.dropSlot() // before the close the client waits for
		_ = c.nc.Close()
	}()
	c.br = bufio.NewReaderSize(newSpinReader(c.nc, c.s.opts.ReadSpin), ioBufSize)
	c.bw = bufio.NewWriterSize(c.nc, 4096)
	_ = c.raw.SetDeadline(time.Now().Add(c.s.opts.HandshakeTimeout))
	if c.s.draining.Load() {
		return
	}
	ctx := c.s.base
	ok, err := c.negotiate(ctx)
	if err != nil {
		c.logEnd("negotiation", err)
		return
	}
	if !ok {
		return
	}
	c.bw = nil
	_ = c.raw.SetDeadline(time.Time{})
	if c.s.draining.Load() { // Shutdown may have set its deadline before ours was cleared
		c.stopReading()
	}
	c.log = c.log.With("export", c.name)
	c.log.Debug("nbd: transmission", "size", c.size, "flags", c.tflags, "structured", c.structured)
	err = c.transmit(ctx)
	c.logEnd("transmission", err)
	if c.dirty.Load() {
		if err := c.vol.Flush(ctx); err != nil {
			c.log.Warn("nbd: flush at disconnect", "err", err)
		}
	}
}

func (c *serverConn) logEnd(phase string, err error) {
	var ne net.Error
	switch {
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		c.log.Debug("nbd: connection closed", "phase", phase)
	case c.s.draining.Load() && errors.As(err, &ne) && ne.Timeout():
		c.log.Debug("nbd: connection closed by shutdown", "phase", phase)
	default:
		c.log.Info("nbd: connection closed", "phase", phase, "err", err)
	}
}

// negotiate runs the fixed newstyle handshake. It returns true when the
// client entered the transmission phase, false when it ended the session.
func (c *serverConn) negotiate(ctx context.Context) (bool, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:8], magicNBD)
	binary.BigEndian.PutUint64(hello[8:16], magicOption)
	binary.BigEndian.PutUint16(hello[16:18], handshakeFixedNewstyle|handshakeNoZeroes)
	if _, err := c.bw.Write(hello[:]); err != nil {
		return false, fmt.Errorf("send greeting: %w", err)
	}
	if err := c.bw.Flush(); err != nil {
		return false, fmt.Errorf("send greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return false, fmt.Errorf("read client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^(clientFixedNewstyle|clientNoZeroes) != 0 {
		return false, fmt.Errorf("client flags %#x: %w", flags, ErrProtocol)
	}
	c.noZeroes = flags&clientNoZeroes != 0

	var oh [16]byte
	for {
		if _, err := io.ReadFull(c.br, oh[:]); err != nil {
			return false, fmt.Errorf("read option header: %w", err)
		}
		h := protocol.NegotiationOptionHeader{
			OptionMagic: binary.BigEndian.Uint64(oh[0:8]),
			ID:          binary.BigEndian.Uint32(oh[8:12]),
			Length:      binary.BigEndian.Uint32(oh[12:16]),
		}
		if h.OptionMagic != magicOption {
			return false, fmt.Errorf("option magic %#x: %w", h.OptionMagic, ErrProtocol)
		}
		if h.Length > maxOptionLen {
			return false, fmt.Errorf("option %d: %d bytes of data, limit %d: %w", h.ID, h.Length, maxOptionLen, ErrProtocol)
		}
		data := make([]byte, h.Length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return false, fmt.Errorf("read option %d data: %w", h.ID, err)
		}
		done, entered, err := c.option(ctx, h.ID, data)
		if err != nil {
			return false, fmt.Errorf("option %d: %w", h.ID, err)
		}
		if err := c.bw.Flush(); err != nil {
			return false, fmt.Errorf("option %d: send reply: %w", h.ID, err)
		}
		if done {
			return entered, nil
		}
	}
}

// option answers one option. done reports that negotiation is over;
// entered that the transmission phase begins.
func (c *serverConn) option(ctx context.Context, opt uint32, data []byte) (done, entered bool, err error) {
	if c.s.opts.RequireTLS && !c.tls {
		switch opt {
		case optStartTLS, optAbort:
		case optExportName:
			return true, false, fmt.Errorf("export %q requested without TLS, which this server requires", data)
		default:
			return false, false, c.repErr(opt, repErrTLSReqd, "TLS is required: send NBD_OPT_STARTTLS first")
		}
	}
	if c.s.draining.Load() && opt != optAbort {
		return false, false, c.repErr(opt, repErrShutdown, "server is shutting down")
	}
	switch opt {
	case optAbort:
		// The client may already have closed: ignore a failed reply.
		_ = c.rep(opt, repAck, nil)
		_ = c.bw.Flush()
		return true, false, nil
	case optList:
		return false, false, c.optList(ctx, data)
	case optStartTLS:
		return false, false, c.optStartTLS(ctx, data)
	case optInfo, optGo:
		entered, err := c.optInfo(ctx, opt, data)
		return entered, entered, err
	case optExportName:
		return true, true, c.optExportName(ctx, string(data))
	case optStructuredReply:
		if len(data) != 0 {
			return false, false, c.repErr(opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
		}
		c.structured = true
		return false, false, c.rep(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return false, false, c.optMetaContext(opt, data)
	default:
		return false, false, c.repErr(opt, repErrUnsup, fmt.Sprintf("option %d is not supported", opt))
	}
}

// rep queues one option reply.
func (c *serverConn) rep(opt, typ uint32, data []byte) error {
	var h [20]byte
	binary.BigEndian.PutUint64(h[0:8], magicOptionReply)
	binary.BigEndian.PutUint32(h[8:12], opt)
	binary.BigEndian.PutUint32(h[12:16], typ)
	binary.BigEndian.PutUint32(h[16:20], uint32(len(data)))
	if _, err := c.bw.Write(h[:]); err != nil {
		return err
	}
	_, err := c.bw.Write(data)
	return err
}

// repErr queues an error reply with a message for the user.
func (c *serverConn) repErr(opt, typ uint32, msg string) error {
	c.log.Debug("nbd: option refused", "option", opt, "reply", typ&^(1<<31), "msg", msg)
	return c.rep(opt, typ, []byte(msg))
}

func (c *serverConn) optList(ctx context.Context, data []byte) error {
	if len(data) != 0 {
		return c.repErr(optList, repErrInvalid, "NBD_OPT_LIST takes no data")
	}
	list, err := c.s.exports.List(ctx)
	if err != nil {
		c.log.Warn("nbd: list exports", "err", err)
		return c.repErr(optList, repErrPolicy, "cannot list exports")
	}
	for _, e := range list {
		b := binary.BigEndian.AppendUint32(nil, uint32(len(e.Name)))
		b = append(b, e.Name...)
		b = append(b, e.Description...)
		if err := c.rep(optList, repServer, b); err != nil {
			return err
		}
	}
	return c.rep(optList, repAck, nil)
}

// prefixConn is a net.Conn whose first reads return bytes already
// buffered from it, so TLS can start after buffered negotiation reads.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (p *prefixConn) Read(b []byte) (int, error) { return p.r.Read(b) }

func (c *serverConn) optStartTLS(ctx context.Context, data []byte) error {
	switch {
	case len(data) != 0:
		return c.repErr(optStartTLS, repErrInvalid, "NBD_OPT_STARTTLS takes no data")
	case c.tls:
		return c.repErr(optStartTLS, repErrInvalid, "TLS is already active")
	case c.s.opts.TLSConfig == nil:
		return c.repErr(optStartTLS, repErrPolicy, "TLS is not configured on this server")
	}
	if err := c.rep(optStartTLS, repAck, nil); err != nil {
		return err
	}
	if err := c.bw.Flush(); err != nil {
		return err
	}
	under := c.raw
	if n := c.br.Buffered(); n > 0 {
		pending, _ := c.br.Peek(n)
		under = &prefixConn{Conn: c.raw, r: io.MultiReader(bytes.NewReader(slices.Clone(pending)), c.raw)}
	}
	tc := tls.Server(under, c.s.opts.TLSConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake (x509 only: Go's crypto/tls has no TLS-PSK): %w", err)
	}
	c.nc = tc
	c.br.Reset(tc)
	c.bw.Reset(tc)
	c.tls = true
	// STARTTLS discards the state negotiated in clear text.
	c.structured, c.metaBase, c.metaExport = false, false, ""
	return nil
}

// exportName resolves the empty name to the default export.
func (c *serverConn) exportName(name string) string {
	if name == "" {
		return c.s.opts.DefaultExport
	}
	return name
}

// ExportFlags returns the transmission flags (NBD_FLAG_*) the server
// sends for an export, read-only (a snapshot) or not, to a client that
// did not ask for structured replies (with them it adds
// NBD_FLAG_SEND_DF). A kernel NBD attach needs them: go-nbd's client does
// not hand the flags it negotiates to the kernel (blockdev/attach).
func ExportFlags(readOnly bool) uint16 {
	f := flagHasFlags | flagSendFlush | flagCanMultiConn
	if readOnly {
		return f | flagReadOnly
	}
	return f | flagSendFUA | flagSendTrim | flagSendWriteZeroes | flagSendFastZero
}

// open opens an export and computes its transmission flags.
func (c *serverConn) open(ctx context.Context, name string) (blockdev.Volume, func(), uint16, error) {
	if name == "" || len(name) > maxNameLen {
		return nil, nil, 0, fmt.Errorf("export %q: %w", name, ErrUnknownExport)
	}
	vol, release, err := c.s.exports.Open(ctx, name)
	if err != nil {
		return nil, nil, 0, err
	}
	f := ExportFlags(vol.ReadOnly())
	if c.structured {
		f |= flagSendDF
	}
	return vol, release, f, nil
}

func (c *serverConn) optExportName(ctx context.Context, name string) error {
	name = c.exportName(name)
	if !c.takeSlot() {
		// NBD_OPT_EXPORT_NAME cannot be refused but by closing.
		return fmt.Errorf("export %q: %s", name, c.capMessage())
	}
	vol, release, flags, err := c.open(ctx, name)
	if err != nil {
		return fmt.Errorf("open export %q: %w", name, err)
	}
	c.enter(name, vol, release, flags)
	b := make([]byte, 10, 10+124)
	binary.BigEndian.PutUint64(b[0:8], uint64(c.size))
	binary.BigEndian.PutUint16(b[8:10], flags)
	if !c.noZeroes {
		b = b[:10+124]
	}
	_, err = c.bw.Write(b)
	return err
}

// enter records the export the transmission phase serves.
func (c *serverConn) enter(name string, vol blockdev.Volume, release func(), flags uint16) {
	c.name, c.vol, c.release, c.tflags, c.size = name, vol, release, flags, vol.Size()
	if c.metaExport != name {
		c.metaBase = false // contexts were negotiated for another export
	}
}

func (c *serverConn) optInfo(ctx context.Context, opt uint32, data []byte) (bool, error) {
	if len(data) < 6 {
		return false, c.repErr(opt, repErrInvalid, "option data too short")
	}
	nl := binary.BigEndian.Uint32(data[0:4])
	if uint64(nl) > uint64(len(data)-6) {
		return false, c.repErr(opt, repErrInvalid, "export name length exceeds option data")
	}
	name := string(data[4 : 4+nl])
	rest := data[4+nl:]
	nreq := int(binary.BigEndian.Uint16(rest[0:2]))
	if len(rest) != 2+2*nreq {
		return false, c.repErr(opt, repErrInvalid, "information request count does not match option length")
	}
	var wantName, wantDesc bool
	for i := range nreq {
		switch binary.BigEndian.Uint16(rest[2+2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		}
	}
	name = c.exportName(name)
	vol, release, flags, err := c.open(ctx, name)
	if err != nil {
		if !errors.Is(err, ErrUnknownExport) {
			c.log.Warn("nbd: open export", "export", name, "err", err)
		}
		return false, c.repErr(opt, repErrUnknown, fmt.Sprintf("export %q is not available", name))
	}
	keep := false
	defer func() {
		if !keep {
			release()
		}
	}()
	if opt == optGo {
		if !c.takeSlot() {
			return false, c.repErr(opt, repErrPolicy, c.capMessage())
		}
		defer func() {
			if !keep {
				c.dropSlot()
			}
		}()
	}
	var b [14]byte
	binary.BigEndian.PutUint16(b[0:2], infoExport)
	binary.BigEndian.PutUint64(b[2:10], uint64(vol.Size()))
	binary.BigEndian.PutUint16(b[10:12], flags)
	if err := c.rep(opt, repInfo, b[:12]); err != nil {
		return false, err
	}
	binary.BigEndian.PutUint16(b[0:2], infoBlockSize)
	binary.BigEndian.PutUint32(b[2:6], minBlockSize)
	binary.BigEndian.PutUint32(b[6:10], preferredBlockSize)
	binary.BigEndian.PutUint32(b[10:14], MaxPayload)
	if err := c.rep(opt, repInfo, b[:14]); err != nil {
		return false, err
	}
	if wantName {
		if err := c.rep(opt, repInfo, append(binary.BigEndian.AppendUint16(nil, infoName), name...)); err != nil {
			return false, err
		}
	}
	if wantDesc {
		if desc := c.description(ctx, name); desc != "" {
			if err := c.rep(opt, repInfo, append(binary.BigEndian.AppendUint16(nil, infoDescription), desc...)); err != nil {
				return false, err
			}
		}
	}
	if err := c.rep(opt, repAck, nil); err != nil {
		return false, err
	}
	if opt == optGo {
		keep = true
		c.enter(name, vol, release, flags)
		return true, nil
	}
	return false, nil
}

// takeSlot takes a place in transmission for c (Server.takeSlot).
func (c *serverConn) takeSlot() bool {
	c.slot = c.s.takeSlot()
	return c.slot
}

// dropSlot gives back c's place in transmission, if it holds one.
func (c *serverConn) dropSlot() {
	if c.slot {
		c.s.releaseSlot()
		c.slot = false
	}
}

// capMessage says why a client is refused at MaxConnections.
func (c *serverConn) capMessage() string {
	return fmt.Sprintf("too many connections: the server serves at most %d at once; try again when one ends", cap(c.s.slots))
}

func (c *serverConn) description(ctx context.Context, name string) string {
	list, err := c.s.exports.List(ctx)
	if err != nil {
		return ""
	}
	for _, e := range list {
		if e.Name == name {
			return e.Description
		}
	}
	return ""
}

// optMetaContext answers NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT. The only context is base:allocation.
func (c *serverConn) optMetaContext(opt uint32, data []byte) error {
	if opt == optSetMetaContext {
		c.metaBase, c.metaExport = false, "" // replaced even if this fails
		if !c.structured {
			return c.repErr(opt, repErrInvalid, "negotiate structured replies first")
		}
	}
	name, queries, ok := parseMetaContext(data)
	if !ok {
		return c.repErr(opt, repErrInvalid, "malformed metadata context request")
	}
	match := false
	if opt == optListMetaContext && len(queries) == 0 {
		match = true
	}
	for _, q := range queries {
		if q == metaBaseAllocation || (opt == optListMetaContext && q == "base:") {
			match = true
		}
	}
	if match {
		id := uint32(0) // reserved in LIST replies
		if opt == optSetMetaContext {
			id = metaBaseAllocationID
			c.metaBase, c.metaExport = true, c.exportName(name)
		}
		b := append(binary.BigEndian.AppendUint32(nil, id), metaBaseAllocation...)
		if err := c.rep(opt, repMetaContext, b); err != nil {
			return err
		}
	}
	return c.rep(opt, repAck, nil)
}

// parseMetaContext decodes a metadata context option: the export name and
// the queries. ok is false when the lengths do not fit the data exactly.
func parseMetaContext(data []byte) (name string, queries []string, ok bool) {
	str := func() (string, bool) {
		if len(data) < 4 {
			return "", false
		}
		n := binary.BigEndian.Uint32(data)
		if uint64(n) > uint64(len(data)-4) || n > maxNameLen {
			return "", false
		}
		s := string(data[4 : 4+n])
		data = data[4+n:]
		return s, true
	}
	if name, ok = str(); !ok || len(data) < 4 {
		return "", nil, false
	}
	nq := binary.BigEndian.Uint32(data)
	data = data[4:]
	if uint64(nq)*4 > uint64(len(data)) {
		return "", nil, false
	}
	for range nq {
		q, ok := str()
		if !ok {
			return "", nil, false
		}
		queries = append(queries, q)
	}
	return name, queries, len(data) == 0
}
