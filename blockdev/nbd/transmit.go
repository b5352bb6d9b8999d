package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"
	"github.com/strata-block/strata/blockdev"
)

const (
	// maxSkipPayload is the largest oversized write payload the reader
	// skips (answering EINVAL) rather than closing the connection.
	maxSkipPayload = 4 * MaxPayload
	// sparseReadMin is the smallest read for which the server asks the
	// device for its extents, to answer holes with OFFSET_HOLE chunks.
	// Below it a hole saves less than the lookup costs.
	sparseReadMin = 64 << 10
	// maxReadChunks bounds the chunks of one sparse read reply; a more
	// fragmented range is sent as one data chunk.
	maxReadChunks = 256
	// maxDescriptors bounds the descriptors of one BLOCK_STATUS reply; the
	// client asks again for the rest.
	maxDescriptors = 1 << 16
)

// request is one transmission request in flight. Requests are pooled.
type request struct {
	protocol.TransmissionRequestHeader
	buf     *[]byte // write payload, or read data after replyHeadroom
	charge  int64   // bytes charged to the connection's budget
	scratch []byte  // reply headers
	// reply is the request's reply, which handle builds: pieces of
	// scratch and buf. send copies it to iov, which the write consumes
	// (a field, so that passing it to the write does not allocate).
	reply net.Buffers
	iov   net.Buffers
}

var requestPool = sync.Pool{New: func() any { return &request{scratch: make([]byte, 0, 64)} }}

// budget caps the payload bytes of the requests in flight. Only the
// request reader acquires; whoever sends a reply releases.
type budget struct {
	mu   sync.Mutex
	cond sync.Cond
	used int64
	max  int64
}

func (b *budget) acquire(n int64) {
	b.mu.Lock()
	for b.used > 0 && b.used+n > b.max {
		b.cond.Wait()
	}
	b.used += n
	b.mu.Unlock()
}

// tryAcquire acquires n if it can do so without waiting.
func (b *budget) tryAcquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used > 0 && b.used+n > b.max {
		return false
	}
	b.used += n
	return true
}

func (b *budget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	b.cond.Signal()
}

const (
	// inlineMax is the largest READ or WRITE the request reader executes
	// itself rather than handing it to a worker.
	inlineMax = 1 << 20
	// takeoverAfter is how long an inline request may keep the reader
	// before another goroutine takes over reading (see reader).
	takeoverAfter = 50 * time.Microsecond
	// maxBatch and maxBatchBytes bound the replies of inline requests
	// the reader holds to send in one write.
	maxBatch      = 64
	maxBatchBytes = 256 << 10
	// sendBufSize is the socket send buffer asked for (the kernel caps
	// it at net.core.wmem_max).
	sendBufSize = 4 << 20
)

// Transmission runs in two kinds of goroutines. The reader decodes
// requests. It executes READs and WRITEs (up to inlineMax, without FUA)
// itself, collecting their replies to send together in one write when it
// is about to wait for the client, and hands every other request to a
// pool of workers, which reply one at a time. A device call that keeps
// the reader longer than takeoverAfter makes a timer start a new reader
// (at most Workers at a time), so a slow request never holds up the
// others: the old reader then sends its own reply and ends. On a page
// cache hit a request thus costs no goroutine switch, and a batch of
// requests taken in by one read(2) is answered by one writev(2).
//
// readState holds the reader role: bit 0 is set while the reader is in
// a device call, and the rest counts takeovers. Whoever moves it from
// busy to idle (the reader when its call returns, or the takeover timer)
// owns the reader state: br, batch, batchIOV and batchBytes.

// transmit runs the transmission phase. It returns when the client
// disconnects (NBD_CMD_DISC or a closed connection), the stream breaks
// the protocol, or the server stops reading; requests already read are
// executed and answered before it returns.
func (c *serverConn) transmit(ctx context.Context) error {
	c.budget.max = c.s.opts.MaxInFlightBytes
	c.budget.cond.L = &c.budget.mu
	if sb, ok := c.raw.(interface{ SetWriteBuffer(int) error }); ok {
		// A large read reply then goes into the socket in one write
		// instead of waiting on the poller for room several times.
		_ = sb.SetWriteBuffer(sendBufSize)
	}
	workers := c.s.opts.Workers
	c.reqs = make(chan *request, workers)
	c.readEnd = make(chan error, 1)
	c.takeover = time.AfterFunc(time.Hour, func() { c.takeOver(ctx) })
	c.takeover.Stop()
	for range workers {
		c.wg.Add(1)
		go c.worker(ctx)
	}
	err, final := c.reader(ctx)
	if !final {
		err = <-c.readEnd
	}
	c.takeover.Stop()
	close(c.reqs)
	c.wg.Wait()
	return err
}

// takeOver runs on the timer when an inline request keeps the reader:
// if that request is still in the device, this goroutine becomes the
// reader.
func (c *serverConn) takeOver(ctx context.Context) {
	s := c.readState.Load()
	if s&1 == 0 || c.taken.Load() >= int32(c.s.opts.Workers) || !c.readState.CompareAndSwap(s, s+1) {
		return
	}
	c.taken.Add(1)
	c.wg.Add(1)
	defer c.wg.Done()
	if err, final := c.reader(ctx); final {
		c.readEnd <- err
	}
}

func (c *serverConn) worker(ctx context.Context) {
	defer c.wg.Done()
	for r := range c.reqs {
		c.handle(ctx, r)
		c.send(r)
	}
}

// send writes one request's reply and frees the request.
func (c *serverConn) send(r *request) {
	iov := append(r.iov[:0], r.reply...)
	r.iov = iov
	c.writev(&r.iov)
	clear(iov)
	r.iov = iov[:0]
	c.free(r)
}

// free releases a request whose reply was sent.
func (c *serverConn) free(r *request) {
	c.budget.release(r.charge)
	putBuf(r.buf)
	r.buf, r.charge, r.reply = nil, 0, r.reply[:0]
	requestPool.Put(r)
}

// flushBatch sends the replies of the inline requests collected so far
// in one write.
func (c *serverConn) flushBatch() {
	if len(c.batch) == 0 {
		return
	}
	iov := c.batchIOV[:0]
	for _, r := range c.batch {
		iov = append(iov, r.reply...)
	}
	c.batchIOV = iov
	c.writev(&c.batchIOV)
	clear(iov)
	c.batchIOV = iov[:0]
	for i, r := range c.batch {
		c.free(r)
		c.batch[i] = nil
	}
	c.batch, c.batchBytes = c.batch[:0], 0
}

// inline reports whether the reader executes r itself.
func inline(r *request) bool {
	return (r.Type == cmdRead || r.Type == cmdWrite) && r.Length <= inlineMax && r.CommandFlags&cmdFlagFUA == 0
}

// reader decodes requests, executes the inline ones and hands the rest to
// the workers, until the client disconnects or the stream fails (final
// true, with the error), or until a takeover while it was in a device
// call (final false; it has then sent that request's reply).
func (c *serverConn) reader(ctx context.Context) (err error, final bool) {
	defer func() {
		if final {
			c.flushBatch()
		}
	}()
	var hb [requestHeaderSize]byte
	for {
		if c.br.Buffered() < requestHeaderSize {
			c.flushBatch()
		}
		if _, err := io.ReadFull(c.br, hb[:]); err != nil {
			return err, true
		}
		h, err := decodeRequest(hb[:])
		if err != nil {
			return err, true
		}
		r := requestPool.Get().(*request)
		r.TransmissionRequestHeader = h
		switch h.Type {
		case cmdDisc:
			requestPool.Put(r)
			return nil, true
		case cmdWrite:
			if h.Length > MaxPayload {
				requestPool.Put(r)
				if h.Length > maxSkipPayload {
					return fmt.Errorf("write of %d bytes, beyond %d: %w", h.Length, maxSkipPayload, ErrProtocol), true
				}
				c.flushBatch()
				if _, err := io.CopyN(io.Discard, c.br, int64(h.Length)); err != nil {
					return err, true
				}
				r := &request{TransmissionRequestHeader: h, scratch: make([]byte, 0, 64)}
				c.replyErr(r, errInval, "write larger than the maximum block size")
				c.writev(&r.reply)
				continue
			}
			c.charge(r, bufCharge(int(h.Length)))
			r.buf = getBuf(int(h.Length))
			if c.br.Buffered() < int(h.Length) {
				c.flushBatch()
			}
			if _, err := io.ReadFull(c.br, *r.buf); err != nil {
				c.free(r)
				return err, true
			}
		case cmdRead:
			if h.Length <= MaxPayload {
				c.charge(r, bufCharge(replyHeadroom+int(h.Length)))
			}
		case cmdBlockStatus:
			n := maxDescriptors
			if h.CommandFlags&cmdFlagReqOne != 0 {
				n = 1
			}
			c.charge(r, bufCharge(blockStatusBuf(n)))
		}
		// Once every takeover a connection may make is in a device call
		// (writes held behind a closed write gate, say), an inline write
		// could not be taken over: it would keep the reader, so no
		// request would be read and the finished replies in the batch
		// would wait for as long as the device takes. It goes to the
		// workers instead, and reads go on inline.
		if !inline(r) || (r.Type == cmdWrite && c.taken.Load() >= int32(c.s.opts.Workers)) {
			select {
			case c.reqs <- r:
			default:
				c.flushBatch()
				c.spawn(ctx, r)
			}
			continue
		}
		s := c.readState.Load() | 1
		c.readState.Store(s)
		c.takeover.Reset(takeoverAfter)
		c.handle(ctx, r)
		if !c.readState.CompareAndSwap(s, s&^1) {
			// Another goroutine is the reader now.
			c.send(r)
			c.taken.Add(-1)
			return nil, false
		}
		c.takeover.Stop()
		c.batch = append(c.batch, r)
		c.batchBytes += int(r.Length)
		if len(c.batch) >= maxBatch || c.batchBytes >= maxBatchBytes {
			c.flushBatch()
		}
	}
}

// spawnCharge is what a request run by spawn without a payload of its
// own (TRIM, WRITE_ZEROES, FLUSH) is charged against the in-flight budget:
// it bounds the goroutines (1024 with the default 64 MiB).
const spawnCharge = 64 << 10

// spawn runs r in a goroutine of its own: every worker is busy and their
// queue is full (FUA writes, trims or large writes held behind a closed
// write gate, say), and waiting for room would keep the reader, so every
// read and flush behind them would go unread until the gate opens. The
// in-flight budget bounds how many run.
func (c *serverConn) spawn(ctx context.Context, r *request) {
	if r.charge == 0 {
		c.charge(r, spawnCharge)
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.handle(ctx, r)
		c.send(r)
	}()
}

// charge acquires n bytes of the budget for r, first sending the
// collected replies if the budget is full (their bytes count).
func (c *serverConn) charge(r *request, n int64) {
	r.charge = n
	if !c.budget.tryAcquire(n) {
		c.flushBatch()
		c.budget.acquire(n)
	}
}

// handle executes one request and builds its reply in r.reply. A panic
// is answered as EIO and logged; the connection stays up.
func (c *serverConn) handle(ctx context.Context, r *request) {
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("nbd: request panicked", "op", cmdName(r.Type), "offset", r.Offset, "length", r.Length, "panic", p)
			c.replyErr(r, errIO, "internal server error")
		}
	}()
	if errno, msg := c.check(r); errno != 0 {
		c.replyErr(r, errno, msg)
		return
	}
	off, n := int64(r.Offset), int64(r.Length)
	var wf blockdev.WriteFlags
	if r.CommandFlags&cmdFlagFUA != 0 {
		wf = blockdev.FUA
	}
	var err error
	switch r.Type {
	case cmdRead:
		c.read(ctx, r)
		return
	case cmdBlockStatus:
		c.blockStatus(ctx, r)
		return
	case cmdWrite:
		_, err = c.vol.WriteAt(ctx, *r.buf, off, wf)
	case cmdFlush:
		c.dirty.Store(false)
		err = c.vol.Flush(ctx)
		if err != nil {
			c.dirty.Store(true)
		}
	case cmdTrim:
		if n > 0 {
			err = c.vol.Trim(ctx, off, n, wf)
		}
	case cmdWriteZeroes:
		// Zero and Trim of Strata devices change only extent metadata
		// (plus the partial blocks at the edges), so FAST_ZERO is always
		// honoured. Without NO_HOLE the range may become a hole.
		switch {
		case n == 0:
		case r.CommandFlags&cmdFlagNoHole != 0:
			err = c.vol.Zero(ctx, off, n, wf)
		default:
			err = c.vol.Trim(ctx, off, n, wf)
		}
	}
	if err == nil && r.Type != cmdFlush {
		c.dirty.Store(true)
	}
	c.replyResult(r, err)
}

// check validates a request's command, flags and range, returning the
// error to answer with (0 if the request may proceed).
func (c *serverConn) check(r *request) (uint32, string) {
	allowed, known := allowedFlags(r.Type, c.structured)
	if !known {
		return errInval, fmt.Sprintf("unknown command %d", r.Type)
	}
	if r.CommandFlags&^allowed != 0 {
		return errInval, fmt.Sprintf("%s: unsupported flags %#x", cmdName(r.Type), r.CommandFlags&^allowed)
	}
	writes := r.Type == cmdWrite || r.Type == cmdTrim || r.Type == cmdWriteZeroes
	if writes && c.tflags&flagReadOnly != 0 {
		return errPerm, fmt.Sprintf("%s: export is read-only", cmdName(r.Type))
	}
	switch r.Type {
	case cmdFlush:
		return 0, ""
	case cmdRead:
		if r.Length > MaxPayload {
			return errInval, fmt.Sprintf("read of %d bytes exceeds the maximum block size %d", r.Length, MaxPayload)
		}
	case cmdBlockStatus:
		if !c.metaBase {
			return errInval, "no metadata context was negotiated"
		}
		if r.Length == 0 {
			return errInval, "block status of zero length"
		}
	}
	if r.Offset > uint64(c.size) || uint64(r.Length) > uint64(c.size)-r.Offset {
		if r.Type == cmdWrite || r.Type == cmdWriteZeroes {
			return errNoSpc, fmt.Sprintf("%s past the end of the export", cmdName(r.Type))
		}
		return errInval, fmt.Sprintf("%s past the end of the export", cmdName(r.Type))
	}
	return 0, ""
}

// errnoOf maps a device error to the NBD error value.
func errnoOf(err error) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, blockdev.ErrReadOnly):
		return errPerm
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return errNoSpc
	case errors.Is(err, blockdev.ErrOutOfRange):
		return errNoSpc
	case errors.Is(err, blockdev.ErrInvalidArgument):
		return errInval
	case errors.Is(err, context.Canceled), errors.Is(err, blockdev.ErrClosed):
		return errShutdown
	default:
		return errIO
	}
}

// replyResult answers a request without payload: success, or the mapped
// error of err.
func (c *serverConn) replyResult(r *request, err error) {
	errno := errnoOf(err)
	if errno != 0 {
		c.failed(r, errno, err)
		return
	}
	b := r.scratch[:simpleReplyHeaderSize]
	putSimpleReply(b, 0, r.Handle)
	r.reply = append(r.reply[:0], b)
}

// failed logs a device error and answers it.
func (c *serverConn) failed(r *request, errno uint32, err error) {
	if errno == errIO {
		c.log.Warn("nbd: request failed", "op", cmdName(r.Type), "offset", r.Offset, "length", r.Length, "err", err)
	} else {
		c.log.Debug("nbd: request refused", "op", cmdName(r.Type), "offset", r.Offset, "length", r.Length, "err", err)
	}
	c.replyErr(r, errno, cmdName(r.Type)+": "+errnoName(errno))
}

// replyErr answers a request with an error: a structured error chunk with
// msg when structured replies are on, else a simple reply.
func (c *serverConn) replyErr(r *request, errno uint32, msg string) {
	if !c.structured {
		b := r.scratch[:simpleReplyHeaderSize]
		putSimpleReply(b, errno, r.Handle)
		r.reply = append(r.reply[:0], b)
		return
	}
	msg = msg[:min(len(msg), maxNameLen)]
	n := chunkHeaderSize + 6 + len(msg)
	if cap(r.scratch) < n {
		r.scratch = make([]byte, n)
	}
	b := r.scratch[:n]
	putChunkHeader(b, replyFlagDone, replyTypeError, r.Handle, uint32(6+len(msg)))
	binary.BigEndian.PutUint32(b[20:24], errno)
	binary.BigEndian.PutUint16(b[24:26], uint16(len(msg)))
	copy(b[26:], msg)
	r.reply = append(r.reply[:0], b)
}

// writev sends whole replies under the write lock. After a failed write
// the connection is closed, which also stops the request reader.
func (c *serverConn) writev(iov *net.Buffers) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return
	}
	c.writing.Store(true)
	err := c.writeSteps(iov)
	c.writing.Store(false)
	if err != nil {
		c.writeFailed(err)
	}
}

// progressStep is the most one write of a reply sends before it counts
// as progress for the watchdog: a larger reply (a read of up to
// MaxPayload) goes out in pieces of this size, so that a client reading
// it slowly, at 35 KB/s or more with the default ReplyTimeout, is not
// taken for one that stopped. Replies up to it (every reply of 4 MiB or
// less, and the inline batches) go in one writev as before.
const progressStep = 4 << 20

// writeSteps writes iov, in pieces of at most progressStep bytes when it
// is larger, counting each in written. Callers hold wmu.
func (c *serverConn) writeSteps(iov *net.Buffers) error {
	total := 0
	for _, b := range *iov {
		total += len(b)
	}
	if total <= progressStep {
		_, err := iov.WriteTo(c.nc)
		c.written.Add(1)
		return err
	}
	for len(*iov) > 0 {
		n, k := 0, 0
		for k < len(*iov) && n+len((*iov)[k]) <= progressStep {
			n += len((*iov)[k])
			k++
		}
		pb := c.pieceBuf[:0]
		if k == 0 { // a buffer larger than a step: its first step
			b := (*iov)[0]
			pb = append(pb, b[:progressStep])
			(*iov)[0] = b[progressStep:]
		} else {
			pb = append(pb, (*iov)[:k]...)
			*iov = (*iov)[k:]
		}
		c.pieceBuf, c.piece = pb, pb
		_, err := c.piece.WriteTo(c.nc)
		clear(pb)
		c.written.Add(1)
		if err != nil {
			return err
		}
	}
	return nil
}

// checkReplyStuck closes the connection if one reply write has been in
// progress, with no other finished, for limit (from the first check that
// saw it): the client has stopped reading its replies. Server.watch calls
// it under the server's lock.
func (c *serverConn) checkReplyStuck(now time.Time, limit time.Duration) {
	n := c.written.Load()
	if !c.writing.Load() || n != c.wdSeen {
		c.wdSeen, c.wdSince = n, time.Time{}
		return
	}
	if c.wdSince.IsZero() {
		c.wdSince = now
		return
	}
	if now.Sub(c.wdSince) >= limit {
		c.log.Warn("nbd: the client has not taken a reply for the reply timeout; closing the connection", "reply_timeout", limit)
		_ = c.raw.Close()
	}
}

// writeFailed records the first reply write error; callers hold wmu.
func (c *serverConn) writeFailed(err error) {
	c.werr = err
	c.log.Debug("nbd: reply write failed; closing", "err", err)
	_ = c.raw.Close()
}

// read answers NBD_CMD_READ. The data goes after replyHeadroom in the
// buffer so the reply header is written in front of it and the reply
// leaves in one write.
func (c *serverConn) read(ctx context.Context, r *request) {
	n := int(r.Length)
	r.buf = getBuf(replyHeadroom + n)
	b := *r.buf
	data := b[replyHeadroom:]
	if c.structured && r.CommandFlags&cmdFlagDF == 0 && n >= sparseReadMin {
		exts, err := c.vol.Extents(ctx, int64(r.Offset), int64(n))
		if err == nil && c.readSparse(ctx, r, data, exts) {
			return
		}
	}
	if n > 0 && !c.readAt(ctx, r, data, int64(r.Offset)) {
		return
	}
	switch {
	case !c.structured:
		putSimpleReply(b[replyHeadroom-simpleReplyHeaderSize:], 0, r.Handle)
		r.reply = append(r.reply[:0], b[replyHeadroom-simpleReplyHeaderSize:])
	case n == 0:
		h := r.scratch[:chunkHeaderSize]
		putChunkHeader(h, replyFlagDone, replyTypeNone, r.Handle, 0)
		r.reply = append(r.reply[:0], h)
	default:
		h := b[replyHeadroom-chunkHeaderSize-8 : replyHeadroom]
		putChunkHeader(h, replyFlagDone, replyTypeOffsetData, r.Handle, uint32(8+n))
		binary.BigEndian.PutUint64(h[chunkHeaderSize:], r.Offset)
		r.reply = append(r.reply[:0], b[replyHeadroom-chunkHeaderSize-8:])
	}
}

// readAt reads p at off for r, answering r with the error and returning
// false if the read fails. Bytes a short read (io.EOF) leaves unfilled are
// zeroed: the buffer is pooled and may hold another request's data.
func (c *serverConn) readAt(ctx context.Context, r *request, p []byte, off int64) bool {
	n, err := c.vol.ReadAt(ctx, p, off)
	if err != nil {
		if !errors.Is(err, io.EOF) {
			c.failed(r, errnoOf(err), err)
			return false
		}
		clear(p[n:])
	}
	return true
}

// span is a run of a read reply: data to send, or zeros to send as a
// hole chunk.
type span struct {
	off, n int64 // relative to the request
	zero   bool
}

// readSparse answers a structured read whose range holds holes or zero
// extents with OFFSET_DATA chunks for the data and OFFSET_HOLE chunks for
// the rest. It returns false, having sent nothing, when the range is all
// data or too fragmented to be worth it.
func (c *serverConn) readSparse(ctx context.Context, r *request, data []byte, exts []blockdev.Extent) bool {
	start, end := int64(r.Offset), int64(r.Offset)+int64(len(data))
	var spans [maxReadChunks]span
	ns := 0
	add := func(off, n int64, zero bool) bool {
		if n <= 0 {
			return true
		}
		if ns > 0 && spans[ns-1].zero == zero && spans[ns-1].off+spans[ns-1].n == off {
			spans[ns-1].n += n
			return true
		}
		if ns == len(spans) {
			return false
		}
		spans[ns] = span{off: off, n: n, zero: zero}
		ns++
		return true
	}
	pos := start
	for _, e := range exts {
		es, ee := max(e.Offset, pos), min(e.Offset+e.Length, end)
		if ee <= es {
			continue
		}
		// Only what the device calls zeros or a hole goes out as a hole
		// chunk; any other kind (an unknown one included) is read.
		zero := e.Kind == blockdev.ExtentZero || e.Kind == blockdev.ExtentHole
		if !add(pos-start, es-pos, false) || !add(es-start, ee-es, zero) {
			return false
		}
		pos = ee
	}
	if !add(pos-start, end-pos, false) {
		return false
	}
	if ns == 1 && !spans[0].zero {
		return false
	}
	for _, s := range spans[:ns] {
		if s.zero {
			continue
		}
		if !c.readAt(ctx, r, data[s.off:s.off+s.n], start+s.off) {
			return true
		}
	}
	const dataHdr, holeHdr = chunkHeaderSize + 8, chunkHeaderSize + 12
	need := 0
	for _, s := range spans[:ns] {
		need += dataHdr
		if s.zero {
			need += holeHdr - dataHdr
		}
	}
	if cap(r.scratch) < need {
		r.scratch = make([]byte, need)
	}
	hdrs := r.scratch[:need]
	r.reply = r.reply[:0]
	for i, s := range spans[:ns] {
		var flags uint16
		if i == ns-1 {
			flags = replyFlagDone
		}
		if s.zero {
			h := hdrs[:holeHdr]
			hdrs = hdrs[holeHdr:]
			putChunkHeader(h, flags, replyTypeOffsetHole, r.Handle, 12)
			binary.BigEndian.PutUint64(h[20:28], uint64(start+s.off))
			binary.BigEndian.PutUint32(h[28:32], uint32(s.n))
			r.reply = append(r.reply, h)
			continue
		}
		h := hdrs[:dataHdr]
		hdrs = hdrs[dataHdr:]
		putChunkHeader(h, flags, replyTypeOffsetData, r.Handle, uint32(8+s.n))
		binary.BigEndian.PutUint64(h[20:28], uint64(start+s.off))
		r.reply = append(r.reply, h, data[s.off:s.off+s.n])
	}
	return true
}

// blockStatus answers NBD_CMD_BLOCK_STATUS for base:allocation: data is
// 0, allocated zeros NBD_STATE_ZERO, holes NBD_STATE_HOLE|NBD_STATE_ZERO.
func (c *serverConn) blockStatus(ctx context.Context, r *request) {
	limit := maxDescriptors
	if r.CommandFlags&cmdFlagReqOne != 0 {
		limit = 1
	}
	r.buf = getBuf(blockStatusBuf(limit))
	b := (*r.buf)[:chunkHeaderSize+4]
	binary.BigEndian.PutUint32(b[chunkHeaderSize:], metaBaseAllocationID)
	nd := 0
	pos, end := int64(r.Offset), int64(r.Offset)+int64(r.Length)
	var last uint32
	// The device is asked a window at a time: a request may span 4 GiB,
	// and the extents of that much of a volume fragmented in 4 KiB pieces
	// would be a million entries in memory at once, for a reply that
	// holds at most maxDescriptors.
window:
	for pos < end {
		wend := min(end, pos+blockStatusWindow)
		exts, err := c.vol.Extents(ctx, pos, wend-pos)
		if err != nil {
			if nd > 0 {
				break // a shorter reply is a valid one
			}
			c.failed(r, errnoOf(err), err)
			return
		}
		for _, e := range exts {
			es, ee := max(e.Offset, pos), min(e.Offset+e.Length, wend)
			if ee <= es || es != pos {
				break window // the extents must be contiguous from the offset
			}
			st := allocationState(e.Kind)
			if nd > 0 && st == last && uint64(binary.BigEndian.Uint32(b[len(b)-8:]))+uint64(ee-es) <= 1<<32-4096 {
				binary.BigEndian.PutUint32(b[len(b)-8:], binary.BigEndian.Uint32(b[len(b)-8:])+uint32(ee-es))
			} else {
				if nd == limit {
					break window
				}
				b = binary.BigEndian.AppendUint32(b, uint32(ee-es))
				b = binary.BigEndian.AppendUint32(b, st)
				nd++
			}
			last, pos = st, ee
		}
		if pos < wend {
			break // the device said nothing (more) about this window
		}
	}
	if nd == 0 { // no information: report the range as allocated data
		b = binary.BigEndian.AppendUint32(b, r.Length)
		b = binary.BigEndian.AppendUint32(b, 0)
	}
	putChunkHeader(b, replyFlagDone, replyTypeBlockStatus, r.Handle, uint32(len(b)-chunkHeaderSize))
	r.reply = append(r.reply[:0], b)
}

// blockStatusWindow is how much of a BLOCK_STATUS range the device is
// asked about at a time: at most 65,536 extents of 4 KiB, about 1.5 MB.
const blockStatusWindow = 256 << 20

// blockStatusBuf is the size of a BLOCK_STATUS reply of n descriptors.
func blockStatusBuf(n int) int { return chunkHeaderSize + 4 + 8*n }

// allocationState maps an extent kind to base:allocation status flags.
func allocationState(k blockdev.ExtentKind) uint32 {
	switch k {
	case blockdev.ExtentZero:
		return stateZero
	case blockdev.ExtentHole:
		return stateHole | stateZero
	default:
		return 0
	}
}
