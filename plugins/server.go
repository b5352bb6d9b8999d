package plugins

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	targetv1 "github.com/strata-block/strata/plugins/proto/v1"
)

// listPage is how many objects one List reply carries: at most
// MaxKeyLength plus a few bytes each, well inside MaxMessageSize.
const listPage = 500

// server is the server shim: it serves a Target, opened by Configure, over
// the gRPC protocol inside the plugin process.
type server struct {
	targetv1.UnimplementedTargetServer

	open   OpenFunc
	logger *slog.Logger
	// chunks says the gRPC server runs codec, so Get may send chunks.
	chunks bool
	// plane is the data plane the host passed, or nil (dataplane.go).
	plane *pluginPlane

	mu     sync.Mutex
	target Target
}

func newServer(open OpenFunc, logger *slog.Logger) *server {
	return &server{open: open, logger: logger}
}

func (s *server) current() (Target, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.target == nil {
		return nil, errNotConfigured
	}
	return s.target, nil
}

// close closes the configured target, if any; the plugin calls it on exit.
func (s *server) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.target == nil {
		return nil
	}
	err := s.target.Close()
	s.target = nil
	return err
}

func (s *server) Configure(ctx context.Context, req *targetv1.ConfigureRequest) (*targetv1.ConfigureResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.target != nil {
		return nil, toStatus(fmt.Errorf("plugin already configured: %w", ErrPermanent))
	}
	t, err := s.open(ctx, req.GetUrl(), NewCredentials(req.GetCredentials()))
	if err != nil {
		return nil, toStatus(fmt.Errorf("open target: %w", err))
	}
	s.target = t
	fileGet := s.plane != nil && servesFiles(t)
	if fileGet {
		s.plane.serveFiles(s)
	}
	s.logger.Debug("target configured", "data_plane", s.plane != nil, "file_get", fileGet)
	return &targetv1.ConfigureResponse{PipeDataPlane: s.plane != nil, FileGet: fileGet, FilePut: fileGet}, nil
}

func (s *server) Info(ctx context.Context, _ *targetv1.InfoRequest) (*targetv1.InfoResponse, error) {
	t, err := s.current()
	if err != nil {
		return nil, toStatus(err)
	}
	info, err := t.Info(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return infoToProto(info), nil
}

func (s *server) Put(stream targetv1.Target_PutServer) error {
	return s.put(stream, false)
}

func (s *server) PutIfAbsent(stream targetv1.Target_PutIfAbsentServer) error {
	return s.put(stream, true)
}

// putStream is what Put and PutIfAbsent streams have in common.
type putStream interface {
	Recv() (*targetv1.PutRequest, error)
	SendAndClose(*targetv1.PutResponse) error
	Context() context.Context
}

func (s *server) put(stream putStream, ifAbsent bool) error {
	first, err := stream.Recv()
	if err != nil {
		return toStatus(Transient(fmt.Errorf("put: receiving header: %w", err)))
	}
	h := first.GetHeader()
	if h == nil {
		return toStatus(fmt.Errorf("put: first message is not a header: %w", ErrPermanent))
	}
	ctx := stream.Context()
	var pipe *os.File
	if tok := h.GetPipeToken(); tok != nil {
		// First, so that every failure below closes it: a host writing
		// into it learns at once (EPIPE), and then reads our status.
		if pipe, err = s.claimPipe(ctx, tok); err != nil {
			return toStatus(fmt.Errorf("put %q: %w", h.GetKey(), err))
		}
		defer pipe.Close()
		defer onDone(ctx, pipe)()
	}
	t, err := s.current()
	if err != nil {
		return toStatus(err)
	}
	if err := ValidateKey(h.GetKey()); err != nil {
		return toStatus(err)
	}
	if h.GetSize() < 0 {
		return toStatus(fmt.Errorf("put %q: negative size %d: %w", h.GetKey(), h.GetSize(), ErrPermanent))
	}
	var r io.Reader
	var committed func() bool
	if pipe != nil {
		pr := &pipePutReader{pipeIn: pipeIn{pipe: pipe, remaining: h.GetSize()}, stream: stream, size: h.GetSize()}
		r, committed = pr, func() bool { return pr.committed }
	} else {
		sr := &putStreamReader{stream: stream}
		r, committed = sr, func() bool { return sr.committed }
	}
	if ifAbsent {
		err = t.PutIfAbsent(ctx, h.GetKey(), r, h.GetSize())
	} else {
		err = t.Put(ctx, h.GetKey(), r, h.GetSize())
	}
	if err != nil {
		return toStatus(err)
	}
	if !committed() {
		// A target that returned before reading to io.EOF broke the
		// contract; the object may be visible without the host's commit.
		s.logger.Error("target stored an object before the put was committed", "key", h.GetKey())
		return toStatus(fmt.Errorf("put %q: target returned before the commit: %w", h.GetKey(), ErrPermanent))
	}
	return stream.SendAndClose(&targetv1.PutResponse{})
}

// putStreamReader reads a Put stream's data messages. It returns io.EOF
// only after the commit message; a stream that ends without one (the host
// cancelled or died) is an error, so the target stores nothing.
type putStreamReader struct {
	stream    putStream
	msg       []byte // the payload buf is part of, released once read
	buf       []byte
	committed bool
	err       error
}

func (r *putStreamReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		releaseData(r.msg)
		r.msg = nil
		if r.err != nil {
			return 0, r.err
		}
		msg, err := recvPut(r.stream)
		switch {
		case err != nil:
			r.err = err
		case msg.GetCommit() != nil:
			r.committed = true
			r.err = io.EOF
		default:
			r.msg = msg.GetData()
			r.buf = r.msg
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// recvPut receives the next message of a Put stream: data or the commit.
func recvPut(stream putStream) (*targetv1.PutRequest, error) {
	msg, err := stream.Recv()
	switch {
	case errors.Is(err, io.EOF):
		return nil, Transient(fmt.Errorf("put stream ended without a commit: %w", io.ErrUnexpectedEOF))
	case err != nil:
		return nil, Transient(fmt.Errorf("put stream: %w", err))
	case msg.GetHeader() != nil:
		return nil, fmt.Errorf("put stream: a second header: %w", ErrPermanent)
	}
	return msg, nil
}

// recvCommit receives the commit of a Put whose data came through a pipe.
func recvCommit(stream putStream) error {
	msg, err := recvPut(stream)
	if err != nil {
		return err
	}
	if msg.GetCommit() == nil {
		return fmt.Errorf("put stream: data messages with a pipe: %w", ErrPermanent)
	}
	return nil
}

// getFile is the configured target's Get, key checked: for a Get call,
// and for an open request on the data plane (fileplane.go).
func (s *server) getFile(ctx context.Context, key string, offset, length int64) (io.ReadCloser, int64, error) {
	t, err := s.current()
	if err != nil {
		return nil, 0, err
	}
	if err := ValidateKey(key); err != nil {
		return nil, 0, err
	}
	return t.Get(ctx, key, offset, length)
}

// putFile is PutFile for a create request on the data plane
// (fileplane.go).
func (s *server) putFile(ctx context.Context, key string, size int64, ifAbsent bool) (FilePut, error) {
	t, err := s.current()
	if err != nil {
		return nil, err
	}
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	ft, ok := t.(FileTarget)
	if !ok || !ft.ServesFiles() {
		return nil, fmt.Errorf("put %q: the target keeps no local files: %w", key, ErrUnsupported)
	}
	return ft.PutFile(ctx, key, size, ifAbsent)
}

func (s *server) Get(req *targetv1.GetRequest, stream targetv1.Target_GetServer) error {
	ctx := stream.Context()
	var pipe *os.File
	if tok := req.GetPipeToken(); tok != nil {
		// First, so that it is closed on every path; after the data,
		// getPipe closes it.
		var err error
		if pipe, err = s.claimPipe(ctx, tok); err != nil {
			return toStatus(fmt.Errorf("get %q: %w", req.GetKey(), err))
		}
		defer pipe.Close()
	}
	rc, n, err := s.getFile(ctx, req.GetKey(), req.GetOffset(), req.GetLength())
	if err != nil {
		return toStatus(err)
	}
	defer rc.Close()
	if err := stream.Send(&targetv1.GetResponse{Msg: &targetv1.GetResponse_Header{Header: &targetv1.GetHeader{Length: n}}}); err != nil {
		return err
	}
	if pipe != nil {
		return toStatus(getPipe(ctx, req.GetKey(), rc, n, pipe))
	}
	var sent int64
	for sent < n {
		bp := bufPool.Get(int(min(ChunkSize, n-sent)))
		m, err := io.ReadFull(rc, *bp)
		if m > 0 {
			if err := s.sendData(stream, bp, m); err != nil {
				return err
			}
			sent += int64(m)
		} else {
			bufPool.Put(bp)
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				err = Transient(fmt.Errorf("get %q: object ended after %d of %d bytes: %w", req.GetKey(), sent, n, io.ErrUnexpectedEOF))
			}
			return toStatus(err)
		}
	}
	return nil
}

// sendData sends the first n bytes of bp as a data message; bp is the
// stream's from then on.
func (s *server) sendData(stream targetv1.Target_GetServer, bp *[]byte, n int) error {
	*bp = (*bp)[:n]
	if s.chunks {
		return stream.SendMsg(&chunk{buf: bp})
	}
	defer bufPool.Put(bp) // the default codec copied it
	return stream.Send(&targetv1.GetResponse{Msg: &targetv1.GetResponse_Data{Data: *bp}})
}

func (s *server) Has(ctx context.Context, req *targetv1.HasRequest) (*targetv1.HasResponse, error) {
	t, err := s.current()
	if err != nil {
		return nil, toStatus(err)
	}
	if err := checkBatch(req.GetKeys()); err != nil {
		return nil, toStatus(err)
	}
	present, err := t.Has(ctx, req.GetKeys())
	if err != nil {
		return nil, toStatus(err)
	}
	if len(present) != len(req.GetKeys()) {
		return nil, toStatus(fmt.Errorf("has: target answered %d of %d keys: %w", len(present), len(req.GetKeys()), ErrPermanent))
	}
	return &targetv1.HasResponse{Present: present}, nil
}

func (s *server) List(req *targetv1.ListRequest, stream targetv1.Target_ListServer) error {
	t, err := s.current()
	if err != nil {
		return toStatus(err)
	}
	if err := ValidatePrefix(req.GetPrefix()); err != nil {
		return toStatus(err)
	}
	page := make([]*targetv1.ObjectInfo, 0, listPage)
	for obj, err := range t.List(stream.Context(), req.GetPrefix(), req.GetStartAfter()) {
		if err != nil {
			return toStatus(err)
		}
		page = append(page, &targetv1.ObjectInfo{Key: obj.Key, Size: obj.Size})
		if len(page) == listPage {
			if err := stream.Send(&targetv1.ListResponse{Objects: page}); err != nil {
				return err
			}
			page = make([]*targetv1.ObjectInfo, 0, listPage)
		}
	}
	if len(page) > 0 {
		return stream.Send(&targetv1.ListResponse{Objects: page})
	}
	return nil
}

func (s *server) Delete(ctx context.Context, req *targetv1.DeleteRequest) (*targetv1.DeleteResponse, error) {
	t, err := s.current()
	if err != nil {
		return nil, toStatus(err)
	}
	if err := checkBatch(req.GetKeys()); err != nil {
		return nil, toStatus(err)
	}
	if err := t.Delete(ctx, req.GetKeys()); err != nil {
		return nil, toStatus(err)
	}
	return &targetv1.DeleteResponse{}, nil
}

// checkBatch validates a Has or Delete batch as it arrives.
func checkBatch(keys []string) error {
	if len(keys) > MaxBatch {
		return fmt.Errorf("batch of %d keys is larger than %d: %w", len(keys), MaxBatch, ErrPermanent)
	}
	return validateKeys(keys)
}

var conditionalToProto = map[ConditionalCreate]targetv1.ConditionalCreate{
	ConditionalCreateAtomic:       targetv1.ConditionalCreate_CONDITIONAL_CREATE_ATOMIC,
	ConditionalCreateCheckThenPut: targetv1.ConditionalCreate_CONDITIONAL_CREATE_CHECK_THEN_PUT,
	ConditionalCreateNone:         targetv1.ConditionalCreate_CONDITIONAL_CREATE_NONE,
}

func infoToProto(i Info) *targetv1.InfoResponse {
	return &targetv1.InfoResponse{
		Kind:              i.Kind,
		ConditionalCreate: conditionalToProto[i.ConditionalCreate],
		MaxObjectSize:     i.MaxObjectSize,
		MaxBatch:          int32(min(i.MaxBatch, MaxBatch)),
	}
}

func infoFromProto(r *targetv1.InfoResponse) Info {
	cc := ConditionalCreateUnknown
	for k, v := range conditionalToProto {
		if v == r.GetConditionalCreate() {
			cc = k
		}
	}
	return Info{
		Kind:              r.GetKind(),
		ConditionalCreate: cc,
		MaxObjectSize:     r.GetMaxObjectSize(),
		MaxBatch:          int(r.GetMaxBatch()),
	}
}
