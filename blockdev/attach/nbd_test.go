package attach

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/blockdev/nbd"
)

// testKernelNBD serves a volume with blockdev/nbd on a unix socket,
// attaches it as /dev/nbdN, formats, mounts and writes it, then detaches
// and checks the files through a second attach.
func testKernelNBD(t *testing.T) {
	r := newRig(t, "vol-nbd", 256<<20)
	ctx := t.Context()
	exports := nbd.NewMapExports()
	if err := exports.Add(blockdev.FromSnapshot(r.vol), ""); err != nil {
		t.Fatal(err)
	}
	srv, err := nbd.NewServer(exports, nbd.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := nbd.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Errorf("nbd shutdown: %v", err)
		}
		if err := <-served; err != nil && !errors.Is(err, nbd.ErrServerClosed) {
			t.Errorf("nbd serve: %v", err)
		}
	})
	attach := func() *NBD {
		d, err := AttachNBD(ctx, "unix", sock, "vol-nbd", nbd.ExportFlags(false), testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		// The kernel took the export's flags: it has a write cache to
		// flush (journal commits reach the server as FLUSH and FUA).
		wc, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(d.Path), "queue/write_cache"))
		if err != nil || strings.TrimSpace(string(wc)) != "write back" {
			t.Errorf("%s queue/write_cache %q (%v), want \"write back\": the kernel sends no FLUSH", d.Path, wc, err)
		}
		t.Cleanup(func() {
			if err := d.Detach(context.Background()); err != nil {
				t.Errorf("nbd detach: %v", err)
			}
		})
		return d
	}
	d := attach()
	if err := Mkfs(ctx, d.Path, Ext4); err != nil {
		t.Fatal(err)
	}
	dir := mountFS(t, d.Path, Ext4, nil)
	sums := writeFiles(t, dir, "n", 3, 1<<20)
	if err := d.Detach(ctx); !errors.Is(err, ErrBusy) {
		t.Errorf("detach of a mounted NBD device: %v, want ErrBusy", err)
	}
	unmountFS(t, dir)
	if err := d.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	d = attach()
	checkFiles(t, mountFS(t, d.Path, Ext4, nil), sums)
}
