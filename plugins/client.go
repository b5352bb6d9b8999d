package plugins

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"sync/atomic"

	"google.golang.org/grpc"

	targetv1 "github.com/strata-block/strata/plugins/proto/v1"
)

// client is the client shim: a Target that calls a plugin over gRPC. It
// validates what it sends, so a bad key never reaches a plugin, and maps
// status codes back to the error classes.
type client struct {
	rpc    targetv1.TargetClient
	closed atomic.Bool
	// plane, if the plugin serves it, carries Put and Get payloads
	// (dataplane.go); nil means data messages.
	plane *hostPlane
	// fileGet: the plugin answers open requests on the plane, so a Get
	// reads the object's file through a descriptor it passes
	// (fileplane.go).
	fileGet bool
	// filePut: the plugin answers create requests, so a Put writes the
	// object's temporary file through a descriptor it passes.
	filePut bool
}

var _ Target = (*client)(nil)

func newClient(rpc targetv1.TargetClient) *client { return &client{rpc: rpc} }

// configure opens the target in the plugin. plane is the host's end of
// the plugin's data plane, or nil; the client uses it only if the plugin
// says it serves it.
func (c *client) configure(ctx context.Context, url string, creds Credentials, plane *hostPlane) error {
	r, err := c.rpc.Configure(ctx, &targetv1.ConfigureRequest{Url: url, Credentials: creds.toMap()})
	if err != nil {
		return fromStatus(ctx, "configure", err)
	}
	if plane != nil && r.GetPipeDataPlane() {
		c.plane = plane
		c.fileGet = r.GetFileGet()
		c.filePut = r.GetFilePut()
	}
	return nil
}

// usesDataPlane reports whether payloads go through pipes.
func (c *client) usesDataPlane() bool { return c.plane != nil }

func (c *client) check() error {
	if c.closed.Load() {
		return ErrClosed
	}
	return nil
}

func (c *client) Info(ctx context.Context) (Info, error) {
	if err := c.check(); err != nil {
		return Info{}, err
	}
	r, err := c.rpc.Info(ctx, &targetv1.InfoRequest{})
	if err != nil {
		return Info{}, fromStatus(ctx, "info", err)
	}
	return infoFromProto(r), nil
}

func (c *client) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return c.put(ctx, "put", key, r, size)
}

func (c *client) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	return c.put(ctx, "put-if-absent", key, r, size)
}

// putClient is what Put and PutIfAbsent client streams have in common.
type putClient interface {
	Send(*targetv1.PutRequest) error
	SendMsg(any) error
	CloseAndRecv() (*targetv1.PutResponse, error)
}

func (c *client) put(ctx context.Context, op, key string, r io.Reader, size int64) error {
	if err := c.check(); err != nil {
		return err
	}
	if err := ValidateKey(key); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("%s %q: negative size %d: %w", op, key, size, ErrPermanent)
	}
	if c.filePut {
		err := c.putFile(ctx, op, key, r, size)
		if !errors.Is(err, errNotFile) {
			return err
		}
	}
	// Cancelling the stream without a commit is how a failed put aborts.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stream putClient
	var err error
	if op == "put" {
		stream, err = c.rpc.Put(sctx, grpc.ForceCodecV2(codec{}))
	} else {
		stream, err = c.rpc.PutIfAbsent(sctx, grpc.ForceCodecV2(codec{}))
	}
	if err != nil {
		return fromStatus(ctx, op, err)
	}
	// A Send that fails with io.EOF means the plugin ended the stream;
	// CloseAndRecv has its status.
	sendErr := func(err error) error {
		if errors.Is(err, io.EOF) {
			_, err = stream.CloseAndRecv()
		}
		return fromStatus(ctx, op, err)
	}
	if c.plane != nil {
		return c.putPipe(sctx, ctx, op, key, r, size, stream, sendErr)
	}
	if err := stream.Send(&targetv1.PutRequest{Msg: &targetv1.PutRequest_Header{Header: &targetv1.PutHeader{Key: key, Size: size}}}); err != nil {
		return sendErr(err)
	}
	src := SizedReader(r, size)
	for {
		// Each chunk is a new buffer: the Send hands it to gRPC, which
		// returns it to the pool once it is written (codec).
		bp := bufPool.Get(ChunkSize)
		n, rerr := fill(src, *bp)
		if n > 0 {
			*bp = (*bp)[:n]
			if err := stream.SendMsg(&chunk{buf: bp}); err != nil {
				return sendErr(err)
			}
		} else {
			bufPool.Put(bp)
		}
		if rerr == io.EOF { //nolint:errorlint // io.EOF is returned unwrapped by convention
			break
		}
		if rerr != nil {
			return fmt.Errorf("%s %q: reading the data: %w", op, key, rerr)
		}
	}
	if err := stream.Send(&targetv1.PutRequest{Msg: &targetv1.PutRequest_Commit{Commit: &targetv1.PutCommit{}}}); err != nil {
		return sendErr(err)
	}
	_, err = stream.CloseAndRecv()
	return fromStatus(ctx, op, err)
}

func (c *client) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, int64, error) {
	if err := c.check(); err != nil {
		return nil, 0, err
	}
	if err := ValidateKey(key); err != nil {
		return nil, 0, err
	}
	if c.fileGet {
		rc, n, err := c.getFile(ctx, key, offset, length)
		if !errors.Is(err, errNotFile) {
			return rc, n, err
		}
	}
	if c.plane != nil {
		return c.getPipe(ctx, key, offset, length)
	}
	sctx, cancel := context.WithCancel(ctx)
	stream, err := c.rpc.Get(sctx, &targetv1.GetRequest{Key: key, Offset: offset, Length: length}, grpc.ForceCodecV2(codec{}))
	if err != nil {
		cancel()
		return nil, 0, fromStatus(ctx, "get", err)
	}
	first, err := stream.Recv()
	if err != nil {
		cancel()
		return nil, 0, fromStatus(ctx, "get", err)
	}
	h := first.GetHeader()
	if h == nil || h.GetLength() < 0 || length >= 0 && h.GetLength() > length {
		cancel()
		return nil, 0, fmt.Errorf("plugin get %q: bad reply header: %w", key, ErrPermanent)
	}
	return &getReader{ctx: ctx, key: key, stream: stream, cancel: cancel, remaining: h.GetLength()}, h.GetLength(), nil
}

// getReader reads a Get stream's data messages, failing if the stream
// ends short of the length its header announced.
type getReader struct {
	ctx       context.Context
	key       string
	stream    targetv1.Target_GetClient
	cancel    context.CancelFunc
	msg       []byte // the payload buf is part of, released once read
	buf       []byte
	remaining int64
	err       error
}

func (g *getReader) Read(p []byte) (int, error) {
	for len(g.buf) == 0 {
		releaseData(g.msg)
		g.msg = nil
		if g.err != nil {
			return 0, g.err
		}
		if g.remaining == 0 {
			g.err = io.EOF
			continue
		}
		msg, err := g.stream.Recv()
		switch {
		case errors.Is(err, io.EOF):
			g.err = Transient(fmt.Errorf("plugin get %q: stream ended %d bytes short: %w", g.key, g.remaining, io.ErrUnexpectedEOF))
		case err != nil:
			g.err = fromStatus(g.ctx, "get", err)
		case int64(len(msg.GetData())) > g.remaining:
			g.err = fmt.Errorf("plugin get %q: more data than announced: %w", g.key, ErrPermanent)
		default:
			g.msg = msg.GetData()
			g.buf = g.msg
			g.remaining -= int64(len(g.buf))
		}
	}
	n := copy(p, g.buf)
	g.buf = g.buf[n:]
	return n, nil
}

func (g *getReader) Close() error {
	g.cancel()
	return nil
}

func (c *client) Has(ctx context.Context, keys []string) ([]bool, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	if err := validateKeys(keys); err != nil {
		return nil, err
	}
	present := make([]bool, 0, len(keys))
	for batch := range batches(keys) {
		r, err := c.rpc.Has(ctx, &targetv1.HasRequest{Keys: batch})
		if err != nil {
			return nil, fromStatus(ctx, "has", err)
		}
		if len(r.GetPresent()) != len(batch) {
			return nil, fmt.Errorf("plugin has: %d answers for %d keys: %w", len(r.GetPresent()), len(batch), ErrPermanent)
		}
		present = append(present, r.GetPresent()...)
	}
	return present, nil
}

func (c *client) List(ctx context.Context, prefix, startAfter string) iter.Seq2[ObjectInfo, error] {
	return func(yield func(ObjectInfo, error) bool) {
		if err := c.check(); err != nil {
			yield(ObjectInfo{}, err)
			return
		}
		if err := ValidatePrefix(prefix); err != nil {
			yield(ObjectInfo{}, err)
			return
		}
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := c.rpc.List(sctx, &targetv1.ListRequest{Prefix: prefix, StartAfter: startAfter})
		if err != nil {
			yield(ObjectInfo{}, fromStatus(ctx, "list", err))
			return
		}
		last := startAfter
		for {
			page, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				yield(ObjectInfo{}, fromStatus(ctx, "list", err))
				return
			}
			for _, o := range page.GetObjects() {
				// A hostile or broken plugin must not hand the host a key
				// it would refuse, or break the order resumption relies on.
				if err := ValidateKey(o.GetKey()); err != nil {
					yield(ObjectInfo{}, fmt.Errorf("plugin list: %w", err))
					return
				}
				if o.GetKey() <= last && last != "" || o.GetSize() < 0 {
					yield(ObjectInfo{}, fmt.Errorf("plugin list: object %q out of order or with a negative size: %w", o.GetKey(), ErrPermanent))
					return
				}
				last = o.GetKey()
				if !yield(ObjectInfo{Key: o.GetKey(), Size: o.GetSize()}, nil) {
					return
				}
			}
		}
	}
}

func (c *client) Delete(ctx context.Context, keys []string) error {
	if err := c.check(); err != nil {
		return err
	}
	if err := validateKeys(keys); err != nil {
		return err
	}
	for batch := range batches(keys) {
		if _, err := c.rpc.Delete(ctx, &targetv1.DeleteRequest{Keys: batch}); err != nil {
			return fromStatus(ctx, "delete", err)
		}
	}
	return nil
}

// Close marks the shim closed; the plugin process belongs to whoever
// started it.
func (c *client) Close() error {
	c.closed.Store(true)
	return nil
}

// batches splits keys into slices of at most MaxBatch.
func batches(keys []string) iter.Seq[[]string] {
	return func(yield func([]string) bool) {
		for len(keys) > 0 {
			n := min(len(keys), MaxBatch)
			if !yield(keys[:n]) {
				return
			}
			keys = keys[n:]
		}
	}
}

// fill reads from r until buf is full or r fails, returning r's error (io.EOF
// at its end) unchanged.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
