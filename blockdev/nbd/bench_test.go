package nbd

import (
	"context"
	"encoding/binary"
	"io"
	"testing"

	"github.com/strata-block/strata/blockdev"
)

// nullVolume is a device that does no I/O, so benchmarks measure the
// server alone.
type nullVolume struct{ size int64 }

func (nullVolume) Name() string                { return "null" }
func (n nullVolume) Size() int64               { return n.size }
func (nullVolume) ReadOnly() bool              { return false }
func (nullVolume) Flush(context.Context) error { return nil }
func (nullVolume) ReadAt(_ context.Context, p []byte, _ int64) (int, error) {
	return len(p), nil
}
func (nullVolume) WriteAt(_ context.Context, p []byte, _ int64, _ blockdev.WriteFlags) (int, error) {
	return len(p), nil
}
func (nullVolume) Zero(context.Context, int64, int64, blockdev.WriteFlags) error { return nil }
func (nullVolume) Trim(context.Context, int64, int64, blockdev.WriteFlags) error { return nil }
func (n nullVolume) Extents(_ context.Context, off, length int64) ([]blockdev.Extent, error) {
	return []blockdev.Extent{{Offset: off, Length: length, Kind: blockdev.ExtentData}}, nil
}

// benchPipelined runs b.N requests of one kind at queue depth qd over one
// connection with simple replies. The client side allocates nothing per
// request, so allocs/op is the server's.
func benchPipelined(b *testing.B, typ uint16, size int, qd int) {
	e := NewMapExports()
	if err := e.Add(nullVolume{size: 1 << 30}, ""); err != nil {
		b.Fatal(err)
	}
	ts := startServer(b, e, Options{})
	tc := newTestClient(b, dialUnix(b, ts.sock))
	tc.goExport("null")
	conn := tc.conn

	req := make([]byte, requestHeaderSize+size)
	binary.BigEndian.PutUint32(req[0:4], magicRequest)
	binary.BigEndian.PutUint16(req[6:8], typ)
	binary.BigEndian.PutUint32(req[24:28], uint32(size))
	if typ != cmdWrite {
		req = req[:requestHeaderSize]
	}
	replySize := simpleReplyHeaderSize
	if typ == cmdRead {
		replySize += size
	}
	credits := make(chan struct{}, qd)
	for range qd {
		credits <- struct{}{}
	}
	errc := make(chan error, 1)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		for i := range b.N {
			<-credits
			binary.BigEndian.PutUint64(req[16:24], uint64(i%(1<<18))*uint64(size)%(1<<30-uint64(size)))
			if _, err := conn.Write(req); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	reply := make([]byte, replySize)
	for range b.N {
		if _, err := io.ReadFull(tc.br, reply); err != nil {
			b.Fatal(err)
		}
		if binary.BigEndian.Uint32(reply[4:8]) != 0 {
			b.Fatalf("errno %d", binary.BigEndian.Uint32(reply[4:8]))
		}
		credits <- struct{}{}
	}
	b.StopTimer()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	tc.disconnect()
}

func BenchmarkRead4KQD32(b *testing.B)  { benchPipelined(b, cmdRead, 4096, 32) }
func BenchmarkWrite4KQD32(b *testing.B) { benchPipelined(b, cmdWrite, 4096, 32) }
func BenchmarkRead1MQD8(b *testing.B)   { benchPipelined(b, cmdRead, 1<<20, 8) }
func BenchmarkWrite1MQD8(b *testing.B)  { benchPipelined(b, cmdWrite, 1<<20, 8) }
