package plugins

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	targetv1 "github.com/strata-block/strata/plugins/proto/v1"
)

// split cuts b into a BufferSlice of pieces of at most n bytes, as gRPC
// hands over a message gathered from HTTP/2 frames.
func split(b []byte, n int) mem.BufferSlice {
	var s mem.BufferSlice
	for len(b) > 0 {
		k := min(n, len(b))
		s = append(s, mem.SliceBuffer(b[:k]))
		b = b[k:]
	}
	return s
}

func TestCodecChunkRoundTrip(t *testing.T) {
	t.Parallel()
	for _, size := range []int{1, minDataMessage - 10, minDataMessage, 100_000, ChunkSize} {
		payload := bytes.Repeat([]byte{0xa5, 0x5a, 7}, size/3+1)[:size]
		bp := bufPool.Get(size)
		copy(*bp, payload)
		enc, err := codec{}.Marshal(&chunk{buf: bp})
		if err != nil {
			t.Fatal(err)
		}
		wire := enc.Materialize()
		enc.Free()
		// Standard protobuf reads it as either message.
		var std targetv1.PutRequest
		if err := proto.Unmarshal(wire, &std); err != nil || !bytes.Equal(std.GetData(), payload) {
			t.Fatalf("size %d: proto.Unmarshal: %v, %d bytes", size, err, len(std.GetData()))
		}
		for _, frame := range []int{3, 16 << 10} {
			var put targetv1.PutRequest
			if err := (codec{}).Unmarshal(split(wire, frame), &put); err != nil || !bytes.Equal(put.GetData(), payload) {
				t.Fatalf("size %d, frames of %d: PutRequest: %v", size, frame, err)
			}
			releaseData(put.GetData())
			var get targetv1.GetResponse
			if err := (codec{}).Unmarshal(split(wire, frame), &get); err != nil || !bytes.Equal(get.GetData(), payload) {
				t.Fatalf("size %d, frames of %d: GetResponse: %v", size, frame, err)
			}
			releaseData(get.GetData())
		}
	}
}

func TestCodecOtherMessages(t *testing.T) {
	t.Parallel()
	msgs := []proto.Message{
		&targetv1.PutRequest{Msg: &targetv1.PutRequest_Header{Header: &targetv1.PutHeader{Key: "a/b", Size: 5}}},
		&targetv1.PutRequest{Msg: &targetv1.PutRequest_Commit{Commit: &targetv1.PutCommit{}}},
		&targetv1.HasRequest{Keys: []string{string(bytes.Repeat([]byte("k"), 1000)), "x"}},
		&targetv1.ListResponse{Objects: []*targetv1.ObjectInfo{{Key: string(bytes.Repeat([]byte("o"), 5000)), Size: 1}}},
	}
	for _, m := range msgs {
		enc, err := codec{}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got := m.ProtoReflect().New().Interface()
		if err := (codec{}).Unmarshal(split(enc.Materialize(), 100), got); err != nil || !proto.Equal(got, m) {
			t.Fatalf("%T: round trip gave %v, %v", m, got, err)
		}
		enc.Free()
	}
	if _, err := (codec{}).Marshal(42); err == nil {
		t.Fatal("Marshal(42) succeeded")
	}
}

// FuzzCodecUnmarshal checks that the codec decodes any input to the same
// message as protobuf does, or fails where protobuf fails.
func FuzzCodecUnmarshal(f *testing.F) {
	big := bytes.Repeat([]byte{1}, minDataMessage+5)
	for _, m := range []proto.Message{
		&targetv1.PutRequest{Msg: &targetv1.PutRequest_Data{Data: big}},
		&targetv1.PutRequest{Msg: &targetv1.PutRequest_Header{Header: &targetv1.PutHeader{Key: "k", Size: 1}}},
		&targetv1.GetResponse{Msg: &targetv1.GetResponse_Data{Data: big[:10]}},
	} {
		b, _ := proto.Marshal(m)
		f.Add(b)
		f.Add(append(b, 0x12, 0)) // a second data field
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, newMsg := range []func() proto.Message{
			func() proto.Message { return &targetv1.PutRequest{} },
			func() proto.Message { return &targetv1.GetResponse{} },
		} {
			want, got := newMsg(), newMsg()
			werr := proto.Unmarshal(b, want)
			gerr := codec{}.Unmarshal(split(b, 7), got)
			if (werr == nil) != (gerr == nil) || werr == nil && !proto.Equal(want, got) {
				t.Fatalf("%T: codec gave %v (%v), protobuf %v (%v)", got, got, gerr, want, werr)
			}
		}
	})
}
