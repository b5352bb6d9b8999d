package plugins

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	targetv1 "github.com/strata-block/strata/plugins/proto/v1"
)

// NewInProcess serves the target open opens over a real gRPC connection
// inside the test process (go-plugin's TestPluginGRPCConn) and returns the
// client shim, configured with url.
func NewInProcess(t testing.TB, open OpenFunc, url string) Target {
	t.Helper()
	return newInProcess(t, open, url, nil, nil)
}

func newInProcess(t testing.TB, open OpenFunc, url string, hp *hostPlane, pp *pluginPlane) *client {
	t.Helper()
	srv := newServer(open, testLogger(t))
	srv.plane = pp
	c, _ := plugin.TestPluginGRPCConn(t, false, map[string]plugin.Plugin{PluginName: &grpcPlugin{srv: srv}})
	t.Cleanup(func() {
		_ = c.Close()
		_ = srv.close()
	})
	raw, err := c.Dispense(PluginName)
	if err != nil {
		t.Fatalf("dispense: %v", err)
	}
	tc, ok := raw.(*client)
	if !ok {
		t.Fatalf("dispensed %T", raw)
	}
	if err := tc.configure(t.Context(), url, Credentials{}, hp); err != nil {
		t.Fatalf("configure: %v", err)
	}
	return tc
}

// InProcessPlane is a client shim and a server shim in the test process,
// talking gRPC and a data plane over a socketpair, for tests of the plane.
type InProcessPlane struct {
	Target Target
	c      *client
	host   *hostPlane
}

// NewInProcessDataPlane is NewInProcess with a data plane whose plugin
// side keeps an unclaimed pipe for ttl and lets a call wait wait for its
// pipe.
func NewInProcessDataPlane(t testing.TB, open OpenFunc, url string, ttl, wait time.Duration) *InProcessPlane {
	t.Helper()
	hp, child, err := newHostPlane()
	if err != nil {
		t.Fatal(err)
	}
	pp := newPluginPlane(child, testLogger(t), ttl, wait)
	t.Cleanup(func() {
		_ = hp.close()
		_ = pp.close()
	})
	c := newInProcess(t, open, url, hp, pp)
	if !c.usesDataPlane() {
		t.Fatal("the in-process server does not advertise its data plane")
	}
	return &InProcessPlane{Target: c, c: c, host: hp}
}

// PutUnsentToken runs a Put whose header names a token no pipe was sent
// with, returning the call's error.
func (p *InProcessPlane) PutUnsentToken(ctx context.Context, key string, size int64) error {
	stream, err := p.c.rpc.Put(ctx, grpc.ForceCodecV2(codec{}))
	if err != nil {
		return fromStatus(ctx, "put", err)
	}
	tok := newToken()
	if err := stream.Send(&targetv1.PutRequest{Msg: &targetv1.PutRequest_Header{Header: &targetv1.PutHeader{Key: key, Size: size, PipeToken: tok[:]}}}); err != nil {
		return fromStatus(ctx, "put", err)
	}
	_, err = stream.CloseAndRecv()
	return fromStatus(ctx, "put", err)
}

// SendOrphanPipe sends the read end of a new pipe under a fresh token that
// no call names, then, if forget, the host's forget message for the
// token, and returns the write end.
func (p *InProcessPlane) SendOrphanPipe(forget bool) (*os.File, error) {
	pr, pw, err := newPipe()
	if err != nil {
		return nil, err
	}
	defer pr.Close()
	tok := newToken()
	if err := p.host.send(context.Background(), tok, pr); err != nil {
		_ = pw.Close()
		return nil, err
	}
	if forget {
		p.host.forget(tok)
	}
	return pw, nil
}

// SendRaw sends msg on the data plane with f's descriptor attached (none
// if f is nil).
func (p *InProcessPlane) SendRaw(msg []byte, f *os.File) error {
	if f == nil {
		_, _, err := p.host.conn.WriteMsgUnix(msg, nil, nil)
		return err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	if err := rc.Control(func(fd uintptr) {
		_, _, werr = p.host.conn.WriteMsgUnix(msg, unix.UnixRights(int(fd)), nil)
	}); err != nil {
		return err
	}
	return werr
}

// FillDataPlane sends pipes on a data plane nobody reads until a send
// fails, returning that error and how many went out: a host whose plugin
// stopped reading must not wait past ctx.
func FillDataPlane(ctx context.Context) (int, error) {
	hp, child, err := newHostPlane()
	if err != nil {
		return 0, err
	}
	defer child.Close()
	defer hp.close()
	pr, pw, err := newPipe()
	if err != nil {
		return 0, err
	}
	defer pr.Close()
	defer pw.Close()
	for n := 0; ; n++ {
		if err := hp.send(ctx, newToken(), pr); err != nil {
			return n, err
		}
	}
}

// Files reports whether Gets and Puts pass descriptors (fileplane.go).
func (p *InProcessPlane) Files() bool { return p.c.fileGet && p.c.filePut }

// DisableFiles makes Gets and Puts use pipes even if the plugin passes
// descriptors, as a host that does not know file_get and file_put would.
func (p *InProcessPlane) DisableFiles() { p.c.fileGet, p.c.filePut = false, false }
