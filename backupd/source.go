package backupd

import (
	"context"
	"time"

	"github.com/strata-block/strata/blockdev"
)

// Extent is a byte range of a Source with one kind (blockdev.ExtentData,
// ExtentZero or ExtentHole).
type Extent = blockdev.Extent

// Source is what a backup reads: one snapshot of a volume. It is the part
// of blockdev.Volume the engine needs, so a snapshot device from
// blockdev.Manager.Open(ctx, "vol@snap") is a Source; tests use in-memory
// ones.
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
	Op         string `json:"op"` // "backup", "restore", "verify"
	Volume     string `json:"volume"`
	Phase      Phase  `json:"phase"`
	BytesTotal int64  `json:"bytes_total"`
	// Position is how much of the volume, from its start, the operation
	// has gone through (backup: chunks hashed and queued for upload, holes
	// and unchanged ranges included; restore: windows restored): what a
	// progress bar against BytesTotal shows.
	Position      int64     `json:"position"`
	BytesScanned  int64     `json:"bytes_scanned"`
	BytesUploaded int64     `json:"bytes_uploaded,omitempty"`
	BytesWritten  int64     `json:"bytes_written,omitempty"`
	Chunks        int64     `json:"chunks"`
	Time          time.Time `json:"time"`
}

// ProgressFunc receives progress events, from one goroutine at a time. It
// must return quickly.
type ProgressFunc func(Progress)
