package backupd

import (
	"context"
	"fmt"
	"time"
)

// ExtentKind says what an Extent of a Source holds. Its values are those
// of blockdev.ExtentKind (and snapshot.ExtentKind); backupd/volsource
// converts.
type ExtentKind uint8

// Extent kinds.
const (
	// ExtentData is written data (which may happen to be zeros): read it.
	ExtentData ExtentKind = iota
	// ExtentZero reads as zeros (written as zeros).
	ExtentZero
	// ExtentHole reads as zeros (never written, or trimmed).
	ExtentHole
)

// String names the kind.
func (k ExtentKind) String() string {
	switch k {
	case ExtentData:
		return "data"
	case ExtentZero:
		return "zero"
	case ExtentHole:
		return "hole"
	}
	return fmt.Sprintf("ExtentKind(%d)", k)
}

// Extent is a byte range of a Source with one kind.
type Extent struct {
	Offset int64
	Length int64
	Kind   ExtentKind
}

// Source is what a backup reads: one snapshot of a volume. It is the part
// of blockdev.Volume the engine needs, with backupd's own Extent type so
// that backupd does not depend on blockdev (and through it on snapshot);
// volsource.New adapts a blockdev.Volume.
//
// ReadAt reads like io.ReaderAt. Extents describes [off, off+length); a
// range it does not cover is read as data. Both may be called concurrently.
type Source interface {
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
}

// Phase names the stage a long operation is in.
type Phase string

// Phases reported in Progress.
const (
	PhaseIndex    Phase = "index"    // listing and loading pack indexes
	PhaseScan     Phase = "scan"     // reading, hashing, uploading
	PhaseFlush    Phase = "flush"    // waiting for the last uploads
	PhaseManifest Phase = "manifest" // writing and checking the manifest
	PhaseRestore  Phase = "restore"  // fetching and writing chunks
	PhaseVerify   Phase = "verify"   // checking chunks
	PhaseDone     Phase = "done"
)

// Progress is one progress event. Counters are totals so far; a consumer
// may drop events. BytesTotal is the volume size (backup, restore) or the
// referenced data (verify).
type Progress struct {
	Op            string    `json:"op"` // "backup", "restore", "verify"
	Volume        string    `json:"volume"`
	Phase         Phase     `json:"phase"`
	BytesTotal    int64     `json:"bytes_total"`
	BytesScanned  int64     `json:"bytes_scanned"`
	BytesUploaded int64     `json:"bytes_uploaded,omitempty"`
	BytesWritten  int64     `json:"bytes_written,omitempty"`
	Chunks        int64     `json:"chunks"`
	Time          time.Time `json:"time"`
}

// ProgressFunc receives progress events, from one goroutine at a time. It
// must return quickly.
type ProgressFunc func(Progress)
