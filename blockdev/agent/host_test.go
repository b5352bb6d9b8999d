package agent

import (
	"bytes"
	"context"
	"os"
	"testing"
)

// TestSnapshotFileRecreated checks that a snapshot deleted while its FUSE
// file is open, then made again under the same name, gets a file of its
// own: before, the open file kept the name (its removal was refused as
// busy and then skipped), so vol@snap went on serving the deleted
// snapshot's data until the agent restarted.
func TestSnapshotFileRecreated(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but the FUSE mount needs root")
		}
		t.Skip("the FUSE mount needs root")
	}
	ctx := t.Context()
	a, err := New(ctx, Config{DataDir: t.TempDir(), FUSE: "on"}, "test", nil)
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	stop, err := a.Start(context.WithoutCancel(ctx))
	if err != nil {
		t.Fatalf("agent.Start: %v", err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("agent.Run: %v", err)
		}
	})
	c := NewClient(APISocket(a.cfg.DataDir))
	createVolumes(t, c, "vol")
	write := func(b byte) []byte {
		dev, release, err := a.Manager().Open(ctx, "vol")
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		p := bytes.Repeat([]byte{b}, 4096)
		if _, err := dev.WriteAt(ctx, p, 0, 0); err != nil {
			t.Fatal(err)
		}
		return p
	}
	readFile := func(f *os.File) []byte {
		p := make([]byte, 4096)
		if _, err := f.ReadAt(p, 0); err != nil {
			t.Fatal(err)
		}
		return p
	}
	first := write(1)
	if _, err := c.CreateSnapshot(ctx, "vol", "s1"); err != nil {
		t.Fatal(err)
	}
	path := a.host.filePath("vol@s1")
	old, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := c.DeleteSnapshot(ctx, "vol", "s1"); err != nil {
		t.Fatal(err)
	}
	second := write(2)
	if _, err := c.CreateSnapshot(ctx, "vol", "s1"); err != nil {
		t.Fatal(err)
	}
	cur, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	if got := readFile(cur); !bytes.Equal(got, second) {
		t.Errorf("%s after the snapshot was made again reads %d..., want %d...", path, got[0], second[0])
	}
	if got := readFile(old); !bytes.Equal(got, first) {
		t.Errorf("the deleted snapshot's open file reads %d..., want %d...", got[0], first[0])
	}
}
