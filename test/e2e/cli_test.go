package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestCLIVerbs drives every volume and snapshot verb of the CLI against a
// real server, with and without --json, and checks the data through the
// FUSE files and the attached devices.
func TestCLIVerbs(t *testing.T) {
	needRoot(t)
	dataDir := t.TempDir()
	s := startServer(t, dataDir)

	var v volumeJSON
	s.mustJSON(&v, "volume", "create", "vol-a", "--size", "64MiB")
	var st struct {
		Version   string    `json:"version"`
		Started   time.Time `json:"started"`
		DataDir   string    `json:"data_dir"`
		APISocket string    `json:"api_socket"`
		NBDSocket string    `json:"nbd_socket"`
		FUSEMount string    `json:"fuse_mount"`
		Volumes   int       `json:"volumes"`
	}
	s.mustJSON(&st, "status")
	if st.DataDir == "" || st.FUSEMount != filepath.Join(dataDir, "mnt") || st.Volumes != 1 || st.Started.IsZero() {
		t.Fatalf("status --json: %+v", st)
	}
	if out := s.must("status"); !strings.Contains(out, "fuse mount: "+st.FUSEMount) || !strings.Contains(out, "volumes:    1") {
		t.Fatalf("status (human): %q", out)
	}
	if v.Name != "vol-a" || v.Size != 64<<20 || v.FUSEPath == "" || !strings.Contains(v.NBDURI, "nbd+unix:///vol-a?socket=") {
		t.Fatalf("create --json: %+v", v)
	}
	if out := s.must("volume", "create", "vol-c", "--size", "10G"); !strings.Contains(out, "created volume vol-c (10 GiB)") {
		t.Fatalf("create (human): %q", out)
	}

	// Data through the FUSE file, made durable with fsync.
	data := bytes.Repeat([]byte("strata-1"), 128<<10) // 1 MiB
	writeAt(t, v.FUSEPath, data, 4096)

	var sn snapshotJSON
	s.mustJSON(&sn, "snapshot", "create", "vol-a", "s1")
	if sn.Name != "s1" || sn.Size != 64<<20 || sn.Owned < int64(len(data)) {
		t.Fatalf("snapshot create --json: %+v", sn)
	}
	writeAt(t, v.FUSEPath, bytes.Repeat([]byte("strata-2"), 512), 4096)
	var auto snapshotJSON
	s.mustJSON(&auto, "snapshot", "create", "vol-a")
	if auto.Name == "" {
		t.Fatal("snapshot create without a name gave no name")
	}
	var snaps []snapshotJSON
	s.mustJSON(&snaps, "snapshot", "ls", "vol-a")
	if len(snaps) != 2 || snaps[0].Name != "s1" || snaps[1].Name != auto.Name {
		t.Fatalf("snapshot ls: %+v", snaps)
	}
	if out := s.must("snapshot", "ls", "vol-a"); !strings.Contains(out, "s1") || !strings.Contains(out, "NAME") {
		t.Fatalf("snapshot ls (human): %q", out)
	}

	// The snapshot's read-only file holds what was written before it.
	snapFile := filepath.Join(filepath.Dir(v.FUSEPath), "vol-a@s1")
	if got := readAt(t, snapFile, len(data), 4096); !bytes.Equal(got, data) {
		t.Fatal("vol-a@s1 does not hold the data written before it")
	}
	if err := os.WriteFile(snapFile, []byte("x"), 0); err == nil {
		t.Fatal("writing a snapshot file succeeded")
	}

	// Clone and grow.
	s.mustJSON(&v, "volume", "clone", "vol-a@s1", "vol-b")
	if v.Name != "vol-b" {
		t.Fatalf("clone: %+v", v)
	}
	s.mustJSON(&v, "volume", "grow", "vol-b", "--size", "128MiB")
	if v.Size != 128<<20 {
		t.Fatalf("grow: size %d", v.Size)
	}
	if got := readAt(t, v.FUSEPath, len(data), 4096); !bytes.Equal(got, data) {
		t.Fatal("clone vol-b does not hold s1's data")
	}

	// Revert vol-a to s1: the later write is gone, and so is the newer snapshot.
	s.must("snapshot", "revert", "vol-a", "s1")
	s.mustJSON(&v, "volume", "info", "vol-a")
	if got := readAt(t, v.FUSEPath, len(data), 4096); !bytes.Equal(got, data) {
		t.Fatal("after revert vol-a does not read s1's data")
	}
	if len(v.Snapshots) != 1 {
		t.Fatalf("after revert: snapshots %+v, want only s1", v.Snapshots)
	}
	s.must("snapshot", "rm", "vol-a", "s1")
	if got := readAt(t, v.FUSEPath, len(data), 4096); !bytes.Equal(got, data) {
		t.Fatal("deleting s1 changed vol-a")
	}

	// Attach, detach, mount with mkfs, umount.
	var at attachmentJSON
	s.mustJSON(&at, "volume", "attach", "vol-a")
	if !strings.HasPrefix(at.Device, "/dev/loop") || at.Kind != "loop" {
		t.Fatalf("attach: %+v", at)
	}
	if got := readAt(t, at.Device, len(data), 4096); !bytes.Equal(got, data) {
		t.Fatal("the loop device does not read the volume")
	}
	s.must("volume", "detach", "vol-a")
	dir := t.TempDir()
	s.mustJSON(&at, "volume", "mount", "vol-b", dir, "--mkfs", "ext4")
	if at.MountPoint != dir || at.FSType != "ext4" {
		t.Fatalf("mount: %+v", at)
	}
	sum := writeRandomFile(t, filepath.Join(dir, "f"), 3<<20)
	s.mustJSON(&v, "volume", "info", "vol-b")
	if v.Attachment == nil || v.Attachment.MountPoint != dir {
		t.Fatalf("info does not show the mount: %+v", v.Attachment)
	}
	s.must("volume", "umount", "vol-b")
	s.must("volume", "mount", "vol-b", dir) // the filesystem is found without --mkfs
	if got := md5File(t, filepath.Join(dir, "f")); got != sum {
		t.Fatal("file changed across umount and mount")
	}
	s.must("volume", "detach", "vol-b") // unmounts first
	// Through a symlink: recorded, and so unmounted, by the real path.
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	s.mustJSON(&at, "volume", "mount", "vol-b", link)
	if at.MountPoint != dir {
		t.Fatalf("mount through a symlink: mount point %q, want the real path %q", at.MountPoint, dir)
	}
	s.must("volume", "detach", "vol-b")

	var vols []volumeJSON
	s.mustJSON(&vols, "volume", "ls")
	if len(vols) != 3 {
		t.Fatalf("volume ls: %d volumes, want 3", len(vols))
	}
	if out := s.must("volume", "ls"); !strings.Contains(out, "vol-c") || !strings.Contains(out, "10 GiB") {
		t.Fatalf("volume ls (human): %q", out)
	}
	var ok map[string]any
	s.mustJSON(&ok, "volume", "rm", "vol-c")
	if ok["ok"] != true {
		t.Fatalf("rm --json: %v", ok)
	}
	s.fails(t, "not found", "volume", "info", "vol-c")
}

// TestCLIErrors checks that bad requests give one clear line, a non-zero
// exit, and change nothing.
func TestCLIErrors(t *testing.T) {
	needRoot(t)
	s := startServer(t, t.TempDir())
	s.must("volume", "create", "vol-a", "--size", "16MiB")
	s.must("snapshot", "create", "vol-a", "s1")
	s.must("volume", "attach", "vol-a")

	var before []volumeJSON
	s.mustJSON(&before, "volume", "ls")
	for _, tc := range []struct {
		want string
		args []string
	}{
		{"invalid name", []string{"volume", "create", "../x", "--size", "1GiB"}},
		{"invalid name", []string{"volume", "create", "Vol", "--size", "1GiB"}},
		{"invalid name", []string{"snapshot", "create", "vol-a", "../s"}},
		{"already exists", []string{"volume", "create", "vol-a", "--size", "1GiB"}},
		{"already exists", []string{"snapshot", "create", "vol-a", "s1"}},
		{"unknown unit", []string{"volume", "create", "vol-x", "--size", "12Q"}},
		{"multiple of 4096", []string{"volume", "create", "vol-x", "--size", "4097"}},
		{"detach it first", []string{"volume", "rm", "vol-a"}},
		{"detach it first", []string{"snapshot", "revert", "vol-a", "s1"}},
		{"not found", []string{"snapshot", "rm", "vol-a", "nope"}},
		{"not found", []string{"snapshot", "revert", "vol-a", "nope"}},
		{"not found", []string{"volume", "clone", "vol-a@nope", "vol-x"}},
		{"not found", []string{"volume", "rm", "nope"}},
		{"not found", []string{"snapshot", "ls", "nope"}},
		{"already attached", []string{"volume", "attach", "vol-a"}},
		{"not mounted", []string{"volume", "umount", "vol-a"}},
		{"want VOLUME@SNAPSHOT", []string{"volume", "clone", "vol-a", "vol-x"}},
		{"invalid argument", []string{"volume", "grow", "vol-a", "--size", "4096"}},
		{"no ext4 or xfs filesystem", []string{"volume", "mount", "vol-a", t.TempDir()}},
		{"inside the data directory", []string{"volume", "mount", "vol-a", filepath.Join(s.dataDir, "mnt")}},
		{"cannot reach the strata server", []string{"volume", "ls", "--socket", filepath.Join(t.TempDir(), "none.sock")}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			s.fails(t, tc.want, tc.args...)
		})
	}
	var after []volumeJSON
	s.mustJSON(&after, "volume", "ls")
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("failed verbs changed the volumes:\nbefore %+v\nafter  %+v", before, after)
	}
}

func writeAt(t *testing.T, path string, p []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", path, err)
	}
}

func readAt(t *testing.T, path string, n int, off int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := make([]byte, n)
	if _, err := f.ReadAt(p, off); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return p
}
