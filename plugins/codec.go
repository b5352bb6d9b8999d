package plugins

import (
	"encoding/binary"
	"fmt"
	"sync"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"

	targetv1 "github.com/strata-block/strata/plugins/proto/v1"
)

// The payload path of the protocol, tuned by measurement
// (benchmarks/NOTES.md, "Backup-target plugins"). gRPC's default proto
// codec costs a 4 MiB Put three passes over the data on top of the copy
// into the stream: a zeroed 1 MiB buffer from its pool, the marshal copy,
// and on the receiving side a zeroed buffer to gather the HTTP/2 frames,
// the gather copy and protobuf's own copy of the bytes field. This codec
// speaks the same wire format (any protobuf peer reads it) but:
//
//   - sends a data message (PutRequest or GetResponse whose only field is
//     data) from a buffer of bufPool whose ownership passes to gRPC, which
//     returns it to the pool once the frames are written: no marshal copy;
//   - receives a data message into a bufPool buffer with one gather copy
//     and no protobuf copy; whoever reads the message hands the buffer
//     back with releaseData;
//   - takes every buffer, its own and gRPC's frame buffers, from bufPool,
//     which does not zero what it hands out: gRPC writes every byte of a
//     buffer before reading it, and so does this codec.

// dataKey is the protobuf key of field 2, length-delimited: data in both
// PutRequest and GetResponse.
const dataKey = 2<<3 | 2

// minDataMessage is the size under which received messages take the plain
// protobuf path: pooling is not worth it for small payloads.
const minDataMessage = 4 << 10

// codec is the gRPC codec of the plugin protocol. Name is "proto": it is
// the protobuf codec on the wire, so it needs no content subtype.
type codec struct{}

// Name returns "proto".
func (codec) Name() string { return "proto" }

// chunk is an outgoing data message: the payload in a bufPool buffer, whose
// ownership passes to gRPC with the Send. Only a stream using codec can
// send one (the client shim forces codec on its calls; the server shim
// sends chunks only when Serve installed codec).
type chunk struct{ buf *[]byte }

// Marshal encodes v; a *chunk becomes a data message without a copy.
func (codec) Marshal(v any) (mem.BufferSlice, error) {
	if c, ok := v.(*chunk); ok {
		key := binary.AppendUvarint([]byte{dataKey}, uint64(len(*c.buf)))
		return mem.BufferSlice{mem.SliceBuffer(key), mem.NewBuffer(c.buf, bufPool)}, nil
	}
	m := messageOf(v)
	if m == nil {
		return nil, fmt.Errorf("plugin codec: cannot marshal a %T: %w", v, ErrPermanent)
	}
	size := proto.Size(m)
	// UseCachedSize: Size just computed it, and nothing changes m meanwhile.
	opts := proto.MarshalOptions{UseCachedSize: true}
	if mem.IsBelowBufferPoolingThreshold(size) {
		b, err := opts.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	bp := bufPool.Get(size)
	b, err := opts.MarshalAppend((*bp)[:0], m)
	if err != nil {
		bufPool.Put(bp)
		return nil, err
	}
	*bp = b
	return mem.BufferSlice{mem.NewBuffer(bp, bufPool)}, nil
}

// Unmarshal decodes data into v; a large data message of a PutRequest or
// GetResponse is gathered into a bufPool buffer the message then owns.
func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	switch m := v.(type) {
	case *targetv1.PutRequest:
		if b, ok := dataMessage(data); ok {
			proto.Reset(m)
			m.Msg = &targetv1.PutRequest_Data{Data: b}
			return nil
		}
	case *targetv1.GetResponse:
		if b, ok := dataMessage(data); ok {
			proto.Reset(m)
			m.Msg = &targetv1.GetResponse_Data{Data: b}
			return nil
		}
	}
	m := messageOf(v)
	if m == nil {
		return fmt.Errorf("plugin codec: cannot unmarshal into a %T: %w", v, ErrPermanent)
	}
	buf := data.MaterializeToBuffer(bufPool)
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

// dataMessage returns the payload of data, in a buffer of bufPool, if data
// is a message of at least minDataMessage bytes holding nothing but field
// 2 as bytes; otherwise false, and data is left to protobuf.
func dataMessage(data mem.BufferSlice) ([]byte, bool) {
	total := data.Len()
	if total < minDataMessage {
		return nil, false
	}
	var head [1 + binary.MaxVarintLen64]byte
	copyFrom(head[:], data, 0)
	if head[0] != dataKey {
		return nil, false
	}
	n, k := binary.Uvarint(head[1:])
	if k <= 0 || n != uint64(total-1-k) {
		return nil, false
	}
	bp := bufPool.Get(int(n))
	copyFrom(*bp, data, 1+k)
	return *bp, true
}

// copyFrom copies data, from its byte skip on, into dst, as much as fits.
func copyFrom(dst []byte, data mem.BufferSlice, skip int) {
	for _, b := range data {
		src := b.ReadOnlyData()
		if skip >= len(src) {
			skip -= len(src)
			continue
		}
		n := copy(dst, src[skip:])
		skip = 0
		dst = dst[n:]
		if len(dst) == 0 {
			return
		}
	}
}

// releaseData returns the payload of a received data message to bufPool
// once its reader has copied it out; nothing may use b afterwards. A
// payload protobuf decoded (not from the pool) is pooled or dropped alike.
func releaseData(b []byte) {
	if b != nil {
		b = b[:0]
		bufPool.Put(&b)
	}
}

func messageOf(v any) proto.Message {
	switch m := v.(type) {
	case proto.Message:
		return m
	case protoadapt.MessageV1:
		return protoadapt.MessageV2Of(m)
	}
	return nil
}

// Sizes of the buffers bufPool keeps: HTTP/2 frames (gRPC's largest is
// 16 KiB) and whole messages.
const (
	frameBuffer   = 16 << 10
	messageBuffer = MaxMessageSize
)

// bufPool is the mem.BufferPool of the plugin connections and of codec.
// Unlike gRPC's default pool it does not zero buffers: every user writes a
// buffer before reading it. Sizes above MaxMessageSize are allocated.
var bufPool = &pool{}

type pool struct {
	frames, messages sync.Pool
}

var _ mem.BufferPool = (*pool)(nil)

// Get returns a buffer of length n, not zeroed.
func (p *pool) Get(n int) *[]byte {
	sp, c := &p.frames, frameBuffer
	switch {
	case n > messageBuffer:
		b := make([]byte, n)
		return &b
	case n > frameBuffer:
		sp, c = &p.messages, messageBuffer
	}
	if bp, ok := sp.Get().(*[]byte); ok {
		*bp = (*bp)[:n]
		return bp
	}
	b := make([]byte, n, c)
	return &b
}

// Put keeps bp for reuse if it has one of the pooled capacities.
func (p *pool) Put(bp *[]byte) {
	switch cap(*bp) {
	case frameBuffer:
		p.frames.Put(bp)
	case messageBuffer:
		p.messages.Put(bp)
	}
}
