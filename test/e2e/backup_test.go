package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// backupJSON is the subset of a backup the test checks.
type backupJSON struct {
	ID            string            `json:"id"`
	Volume        string            `json:"volume"`
	Snapshot      string            `json:"snapshot"`
	SnapCreated   time.Time         `json:"snapshot_created"` // prune lists
	Parent        string            `json:"parent"`
	Created       time.Time         `json:"created"`
	Size          int64             `json:"size"`
	Digest        string            `json:"digest"`
	Target        string            `json:"target"`
	ManifestKey   string            `json:"manifest_key"`
	Encrypted     bool              `json:"encrypted"`
	TargetURL     string            `json:"target_url"`
	Tags          map[string]string `json:"tags"`
	Reused        bool              `json:"reused"`
	Key           string            `json:"key"` // prune lists
	BytesScanned  int64             `json:"bytes_scanned"`
	BytesUploaded int64             `json:"bytes_uploaded"`
	ChunksNew     int64             `json:"chunks_new"`
	ChunksDedup   int64             `json:"chunks_dedup"`
	ChunksZero    int64             `json:"chunks_zero"`
	PagesUploaded int64             `json:"pages_uploaded"`
}

type backupEventJSON struct {
	Event    string      `json:"event"`
	Phase    string      `json:"phase"`
	Snapshot string      `json:"snapshot"`
	Backup   *backupJSON `json:"backup"`
	Restore  *struct {
		ID           string `json:"id"`
		To           string `json:"to"`
		Created      bool   `json:"created"`
		Digest       string `json:"digest"`
		ResumedBytes int64  `json:"resumed_bytes"`
	} `json:"restore"`
	Verify *struct {
		OK bool `json:"ok"`
	} `json:"verify"`
}

// events runs a streaming verb with --json and decodes every line.
func (s *server) events(args ...string) []backupEventJSON {
	s.t.Helper()
	out := s.must(append(args, "--json")...)
	var evs []backupEventJSON
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev backupEventJSON
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			s.t.Fatalf("strata %s --json: line %q: %v", strings.Join(args, " "), line, err)
		}
		evs = append(evs, ev)
	}
	if len(evs) == 0 {
		s.t.Fatalf("strata %s --json printed nothing", strings.Join(args, " "))
	}
	return evs
}

func (s *server) backup(args ...string) *backupJSON {
	s.t.Helper()
	evs := s.events(append([]string{"backup", "create"}, args...)...)
	last := evs[len(evs)-1]
	if last.Event != "done" || last.Backup == nil || last.Backup.ID == "" {
		s.t.Fatalf("backup create %v: last event %+v", args, last)
	}
	for _, ev := range evs[:len(evs)-1] {
		if ev.Event != "progress" {
			s.t.Fatalf("backup create %v: event %+v before done", args, ev)
		}
	}
	return last.Backup
}

func TestBackupCLI(t *testing.T) {
	needRoot(t)
	s := startServer(t, t.TempDir())
	targetDir := t.TempDir()
	s.must("target", "add", "local", "file://"+targetDir)

	const size = 64 << 20
	var v volumeJSON
	s.mustJSON(&v, "volume", "create", "vol-a", "--size", "64MiB")
	want := make([]byte, size) // what vol-a holds
	data := make([]byte, 8<<20)
	_, _ = rand.Read(data)
	writeAt(t, v.FUSEPath, data, 0)
	copy(want, data)
	want1 := bytes.Clone(want)

	b1 := s.backup("vol-a")
	if b1.Volume != "vol-a" || b1.Target != "local" || b1.Parent != "" || b1.Size != size || !strings.HasPrefix(b1.Snapshot, "backup-") {
		t.Fatalf("first backup: %+v", b1)
	}
	if b1.BytesUploaded < int64(len(data)) {
		t.Fatalf("first backup uploaded %d bytes, wrote %d random bytes", b1.BytesUploaded, len(data))
	}

	patch := make([]byte, 64<<10)
	_, _ = rand.Read(patch)
	writeAt(t, v.FUSEPath, patch, 1<<20)
	copy(want[1<<20:], patch)
	want2 := bytes.Clone(want)
	b2 := s.backup("vol-a", "--target", "local")
	if b2.Parent != b1.ID {
		t.Fatalf("second backup's parent %q, want the first %q", b2.Parent, b1.ID)
	}
	if b2.BytesUploaded*10 > b1.BytesUploaded {
		t.Fatalf("incremental backup uploaded %d bytes, the full one %d", b2.BytesUploaded, b1.BytesUploaded)
	}
	// Human output is the id on stdout.
	var b3id string
	if out := s.must("backup", "create", "vol-a", "--snapshot", b2.Snapshot); len(strings.TrimSpace(out)) != 32 {
		t.Fatalf("backup create (human): %q", out)
	} else {
		b3id = strings.TrimSpace(out)
	}

	var ls []backupJSON
	s.mustJSON(&ls, "backup", "ls")
	if len(ls) != 3 || ls[0].ID != b1.ID || ls[1].ID != b2.ID || ls[2].ID != b3id || ls[0].Target != "local" {
		t.Fatalf("backup ls: %+v", ls)
	}
	if out := s.must("backup", "ls", "vol-a"); !strings.Contains(out, "SNAPSHOT") || !strings.Contains(out, b1.ID) || !strings.Contains(out, "64 MiB") {
		t.Fatalf("backup ls (human): %q", out)
	}
	s.mustJSON(&ls, "backup", "ls", "nothing-here")
	if len(ls) != 0 {
		t.Fatalf("backup ls of a volume without backups: %+v", ls)
	}

	var info backupJSON
	s.mustJSON(&info, "backup", "info", b2.ID)
	if info.ID != b2.ID || info.Parent != b1.ID || info.Digest != b2.Digest || info.Snapshot != b2.Snapshot || info.BytesUploaded != b2.BytesUploaded {
		t.Fatalf("backup info: %+v, created %+v", info, b2)
	}
	if out := s.must("backup", "info", b1.ID); !strings.Contains(out, "none (full)") || !strings.Contains(out, b1.Digest) {
		t.Fatalf("backup info (human): %q", out)
	}

	// Restore the incremental into a new volume: it is the whole volume.
	evs := s.events("backup", "restore", b2.ID, "--to", "vol-r")
	if last := evs[len(evs)-1]; last.Event != "done" || last.Restore == nil || !last.Restore.Created || last.Restore.Digest != b2.Digest {
		t.Fatalf("restore: last event %+v", last)
	}
	s.mustJSON(&v, "volume", "info", "vol-r")
	if v.Size != size {
		t.Fatalf("restored volume size %d", v.Size)
	}
	if got := readAt(t, v.FUSEPath, size, 0); !bytes.Equal(got, want2) {
		t.Fatal("vol-r does not hold vol-a's data at the second backup")
	}
	// Over an existing volume only when asked: a mistyped name must not
	// cost a volume.
	s.fails(t, "--overwrite", "backup", "restore", b1.ID, "--to", "vol-r")
	if got := readAt(t, v.FUSEPath, size, 0); !bytes.Equal(got, want2) {
		t.Fatal("a restore refused without --overwrite changed vol-r")
	}
	// Restore the first backup over it (existing, detached, same size).
	if out := s.must("backup", "restore", b1.ID, "--to", "vol-r", "--overwrite"); !strings.Contains(out, "existing volume vol-r") {
		t.Fatalf("restore (human): %q", out)
	}
	if got := readAt(t, v.FUSEPath, size, 0); !bytes.Equal(got, want1) {
		t.Fatal("vol-r does not hold vol-a's data at the first backup")
	}

	// Refusals.
	s.must("volume", "attach", "vol-r")
	s.fails(t, "is attached", "backup", "restore", b1.ID, "--to", "vol-r", "--overwrite")
	s.must("volume", "detach", "vol-r")
	// Open through its FUSE file (a VM using the file, say): in use, not
	// overwritten; once closed, restored.
	user, err := os.OpenFile(v.FUSEPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	s.fails(t, "in use", "backup", "restore", b2.ID, "--to", "vol-r", "--overwrite")
	_ = user.Close()
	if got := readAt(t, v.FUSEPath, size, 0); !bytes.Equal(got, want1) {
		t.Fatal("a refused restore changed vol-r")
	}
	s.must("backup", "restore", b2.ID, "--to", "vol-r", "--overwrite")
	if got := readAt(t, v.FUSEPath, size, 0); !bytes.Equal(got, want2) {
		t.Fatal("vol-r does not hold vol-a's data at the second backup after the file was closed")
	}
	s.must("volume", "create", "vol-small", "--size", "4MiB")
	s.fails(t, "size", "backup", "restore", b1.ID, "--to", "vol-small")
	s.fails(t, "not found", "backup", "info", strings.Repeat("0", 32))
	s.fails(t, "not found", "backup", "restore", strings.Repeat("0", 32), "--to", "vol-x")
	s.fails(t, "32 lowercase hex", "backup", "info", "nope")
	s.fails(t, "not found", "backup", "create", "no-such-volume")
	s.fails(t, "not found", "backup", "create", "vol-a", "--target", "nope")

	// Verify, then damage one pack of the first (full) backup.
	evs = s.events("backup", "verify", b1.ID, "--read-data")
	if last := evs[len(evs)-1]; last.Event != "done" || last.Verify == nil || !last.Verify.OK {
		t.Fatalf("verify: last event %+v", last)
	}
	if out := s.must("backup", "verify", b2.ID); !strings.Contains(out, "OK") {
		t.Fatalf("verify (human): %q", out)
	}
	var biggest string
	var biggestSize int64
	_ = filepath.WalkDir(filepath.Join(targetDir, "packs"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil && fi.Size() > biggestSize {
				biggest, biggestSize = p, fi.Size()
			}
		}
		return nil
	})
	if biggest == "" {
		t.Fatalf("no pack file under %s", targetDir)
	}
	f, err := os.OpenFile(biggest, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	one := make([]byte, 1)
	if _, err := f.ReadAt(one, biggestSize/2); err != nil {
		t.Fatal(err)
	}
	one[0] ^= 0xff
	if _, err := f.WriteAt(one, biggestSize/2); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	s.fails(t, "vol-a", "backup", "verify", b1.ID, "--read-data")
	s.fails(t, "chunk ", "backup", "verify", b1.ID, "--read-data")

	// Delete and prune.
	if out := s.must("backup", "rm", b1.ID); !strings.Contains(out, "deleted backup "+b1.ID) {
		t.Fatalf("backup rm: %q", out)
	}
	s.fails(t, "not found", "backup", "rm", b1.ID)
	var pr []struct {
		Target  string       `json:"target"`
		Kept    []backupJSON `json:"kept"`
		Deleted []backupJSON `json:"deleted"`
	}
	s.mustJSON(&pr, "backup", "prune", "vol-a", "--keep-last", "1")
	if len(pr) != 1 || len(pr[0].Kept) != 1 || pr[0].Kept[0].ID != b3id || len(pr[0].Deleted) != 1 || pr[0].Deleted[0].ID != b2.ID ||
		pr[0].Kept[0].SnapCreated.IsZero() {
		t.Fatalf("prune: %+v", pr)
	}
	s.mustJSON(&ls, "backup", "ls", "vol-a")
	if len(ls) != 1 || ls[0].ID != b3id {
		t.Fatalf("backup ls after prune: %+v", ls)
	}
	s.fails(t, "keeps nothing", "backup", "prune", "vol-a")
	s.fails(t, "keep-within", "backup", "prune", "vol-a", "--keep-within", "soon")

	// --no-wait: accepted at once; the backup is listed once committed.
	evs = s.events("backup", "create", "vol-a", "--no-wait")
	if len(evs) != 1 || evs[0].Event != "accepted" || evs[0].Snapshot == "" {
		t.Fatalf("backup create --no-wait: %+v", evs)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		s.mustJSON(&ls, "backup", "ls", "vol-a")
		if len(ls) == 2 && ls[1].Snapshot == evs[0].Snapshot {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("detached backup of snapshot %s not listed after 2 min: %+v\nserver log:\n%s", evs[0].Snapshot, ls, s.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestBackupEncrypted(t *testing.T) {
	needRoot(t)
	dataDir := t.TempDir()
	keyFile := filepath.Join(t.TempDir(), "backup.key")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("5a", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, dataDir, "--fuse", "off", "--backup-key", keyFile)
	s.must("target", "add", "local", "file://"+t.TempDir())
	s.must("volume", "create", "vol-e", "--size", "16MiB")
	b := s.backup("vol-e")
	var info backupJSON
	s.mustJSON(&info, "backup", "info", b.ID)
	if !info.Encrypted {
		t.Fatalf("backup with --backup-key is not encrypted: %+v", info)
	}
	evs := s.events("backup", "restore", b.ID, "--to", "vol-f")
	if last := evs[len(evs)-1]; last.Event != "done" || last.Restore == nil || last.Restore.Digest != b.Digest {
		t.Fatalf("restore of an encrypted backup: %+v", last)
	}

	// Without the key the backup is listed but does not restore.
	s.stop(syscall.SIGTERM)
	s = startServer(t, dataDir, "--fuse", "off")
	s.fails(t, "key", "backup", "restore", b.ID, "--to", "vol-g")
	var vols []volumeJSON
	s.mustJSON(&vols, "volume", "ls")
	for _, v := range vols {
		if v.Name == "vol-g" {
			t.Fatal("a failed restore left the volume it created")
		}
	}
}
