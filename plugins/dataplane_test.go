package plugins_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-block/strata/plugins"
	"github.com/strata-block/strata/plugins/fs"
	"github.com/strata-block/strata/plugins/targettest"
)

// The shims over a real gRPC connection in this process, payloads over
// the data plane.
func TestConformanceGRPCDataPlane(t *testing.T) {
	t.Parallel()
	targettest.Run(t, func(t *testing.T) plugins.Target {
		return plugins.NewInProcessDataPlane(t, targettest.OpenMemory, "mem:", time.Minute, 30*time.Second).Target
	})
}

// The shims with the fs target: its Gets and Puts pass descriptors
// (fileplane.go), or, for a host that does not ask for them, fs splices
// pipes into and out of its files.
func TestConformanceGRPCDataPlaneFiles(t *testing.T) {
	t.Parallel()
	for _, files := range []bool{true, false} {
		t.Run(fmt.Sprintf("files=%v", files), func(t *testing.T) {
			t.Parallel()
			targettest.Run(t, func(t *testing.T) plugins.Target {
				p := plugins.NewInProcessDataPlane(t, fs.Open, "file://"+t.TempDir(), time.Minute, 30*time.Second)
				if !p.Files() {
					t.Fatal("the fs target's server shim does not offer descriptors")
				}
				if !files {
					p.DisableFiles()
				}
				return p.Target
			})
		})
	}
}

// A call naming a token whose pipe never comes fails once the plugin
// stops waiting, stores nothing, and leaves the plane working.
func TestDataPlaneTokenWithoutPipe(t *testing.T) {
	t.Parallel()
	p := plugins.NewInProcessDataPlane(t, targettest.OpenMemory, "mem:", time.Minute, 200*time.Millisecond)
	err := p.PutUnsentToken(t.Context(), "k", 10)
	if err == nil || !errors.Is(err, plugins.ErrTransient) || !strings.Contains(err.Error(), "no pipe arrived") {
		t.Fatalf("Put naming an unsent token: %v, want a transient error saying no pipe arrived", err)
	}
	// The caller's context bounds the wait too.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := p.PutUnsentToken(ctx, "k", 10); err == nil {
		t.Fatal("Put naming an unsent token succeeded")
	}
	checkPlaneWorks(t, p.Target)
	if has, err := p.Target.Has(t.Context(), []string{"k"}); err != nil || has[0] {
		t.Fatalf("Has(k) = %v, %v after failed puts", has, err)
	}
}

// A pipe that no call claims is closed by the plugin after its TTL, or at
// once when the host says it gave up the call: its writer sees EPIPE.
func TestDataPlanePipeWithoutCall(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		ttl    time.Duration
		forget bool
	}{
		// The TTL applies to every pipe of the plane, the calls of
		// checkPlaneWorks too: it must outlast a call's gRPC round trip on
		// a loaded machine (100 ms did not, under make test's race runs).
		{name: "expired", ttl: 2 * time.Second},
		{name: "forgotten", ttl: time.Hour, forget: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := plugins.NewInProcessDataPlane(t, targettest.OpenMemory, "mem:", tt.ttl, 30*time.Second)
			pw, err := p.SendOrphanPipe(tt.forget)
			if err != nil {
				t.Fatal(err)
			}
			wantEPIPE(t, pw)
			checkPlaneWorks(t, p.Target)
		})
	}
}

// wantEPIPE fills pw and then blocks until its reader closes the pipe,
// which the plugin must do.
func wantEPIPE(t *testing.T, pw *os.File) {
	t.Helper()
	defer pw.Close()
	if err := pw.SetWriteDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := pw.Write(make([]byte, 4<<20)); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("writing to the pipe: %v, want EPIPE once the plugin closed it", err)
	}
}

// Malformed messages on the plane are dropped (and their descriptors
// closed); the plane goes on working.
func TestDataPlaneBadMessages(t *testing.T) {
	t.Parallel()
	p := plugins.NewInProcessDataPlane(t, targettest.OpenMemory, "mem:", time.Minute, 30*time.Second)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SendRaw([]byte("short token"), r); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := p.SendRaw(bytes.Repeat([]byte{1}, 17), nil); err != nil {
		t.Fatal(err)
	}
	wantEPIPE(t, w)
	checkPlaneWorks(t, p.Target)
}

func checkPlaneWorks(t *testing.T, tg plugins.Target) {
	t.Helper()
	data := targettest.Data(7, 3<<20+1)
	if err := tg.Put(t.Context(), "works", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put after: %v", err)
	}
	rc, n, err := tg.Get(t.Context(), "works", 1, -1)
	if err != nil {
		t.Fatalf("Get after: %v", err)
	}
	defer rc.Close()
	var got bytes.Buffer
	if _, err := got.ReadFrom(rc); err != nil || n != int64(len(data)-1) || !bytes.Equal(got.Bytes(), data[1:]) {
		t.Fatalf("Get after: %d bytes (announced %d), %v", got.Len(), n, err)
	}
}

// A plugin that stops reading its socket (a stopped process) fills it; the
// host's send then waits only as long as the call's context.
func TestDataPlaneSendFullSocket(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	n, err := plugins.FillDataPlane(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || n == 0 {
		t.Fatalf("after %d pipes: %v, want the context's deadline", n, err)
	}
}

// refusingTarget fails every Put at once, without reading its data.
type refusingTarget struct{ plugins.Target }

var errRefused = errors.New("refused before reading")

func (refusingTarget) Put(context.Context, string, io.Reader, int64) error {
	return fmt.Errorf("put: %w (%w)", errRefused, plugins.ErrPermanent)
}

// A target that fails a Put without reading its pipe: the host, blocked
// writing into the pipe, gets EPIPE at once and returns the target's error.
func TestDataPlanePutRefusedUnread(t *testing.T) {
	t.Parallel()
	open := func(ctx context.Context, url string, creds plugins.Credentials) (plugins.Target, error) {
		tg, err := targettest.OpenMemory(ctx, url, creds)
		return refusingTarget{tg}, err
	}
	p := plugins.NewInProcessDataPlane(t, open, "mem:", time.Minute, 30*time.Second)
	data := targettest.Data(9, 16<<20)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := p.Target.Put(ctx, "k", bytes.NewReader(data), int64(len(data)))
	if !errors.Is(err, plugins.ErrPermanent) || !strings.Contains(err.Error(), errRefused.Error()) {
		t.Fatalf("Put: %v, want the target's permanent error", err)
	}
}
