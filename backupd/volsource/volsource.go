// Package volsource adapts blockdev volumes to the backup engine: a
// blockdev.Volume (a snapshot device) as a backupd.Source, a writable one
// as a backupd.Destination, and blockdev.Manager.Changed as the changed
// extents of an incremental backup.
//
// It is separate from backupd so that backupd itself depends on neither
// blockdev nor, through it, snapshot (internal/layering). It imports
// blockdev and backupd only.
package volsource

import (
	"context"
	"fmt"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/blockdev"
)

// Source is a blockdev.Volume read as a backupd.Source.
type Source struct{ V blockdev.Volume }

// New returns v as a backupd.Source.
func New(v blockdev.Volume) Source { return Source{V: v} }

// Size returns the device size.
func (s Source) Size() int64 { return s.V.Size() }

// ReadAt reads from the device.
func (s Source) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	return s.V.ReadAt(ctx, p, off)
}

// Extents converts the device's extents.
func (s Source) Extents(ctx context.Context, off, length int64) ([]backupd.Extent, error) {
	es, err := s.V.Extents(ctx, off, length)
	if err != nil {
		return nil, err
	}
	return Convert(es)
}

// Convert converts blockdev extents to backupd extents.
func Convert(es []blockdev.Extent) ([]backupd.Extent, error) {
	out := make([]backupd.Extent, len(es))
	for i, e := range es {
		var k backupd.ExtentKind
		switch e.Kind {
		case blockdev.ExtentData:
			k = backupd.ExtentData
		case blockdev.ExtentZero:
			k = backupd.ExtentZero
		case blockdev.ExtentHole:
			k = backupd.ExtentHole
		default:
			return nil, fmt.Errorf("extent %d+%d has unknown kind %v: %w", e.Offset, e.Length, e.Kind, backupd.ErrInvalid)
		}
		out[i] = backupd.Extent{Offset: e.Offset, Length: e.Length, Kind: k}
	}
	return out, nil
}

// Changed returns the extents of volume written between snapshots from
// and to, for BackupOptions.Changed.
func Changed(ctx context.Context, m *blockdev.Manager, volume, from, to string) ([]backupd.Extent, error) {
	es, err := m.Changed(ctx, volume, from, to)
	if err != nil {
		return nil, fmt.Errorf("changed extents of volume %q from %q to %q: %w", volume, from, to, err)
	}
	out, err := Convert(es)
	if out == nil {
		out = []backupd.Extent{}
	}
	return out, err
}

// Destination is a writable blockdev.Volume as a backupd.Destination;
// Flush is the device's flush.
type Destination struct{ V blockdev.Volume }

// Size returns the device size.
func (d Destination) Size() int64 { return d.V.Size() }

// WriteAt writes to the device.
func (d Destination) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	return d.V.WriteAt(ctx, p, off, 0)
}

// Flush flushes the device.
func (d Destination) Flush(ctx context.Context) error { return d.V.Flush(ctx) }

// BackupSnapshot backs up snapshot snap of volume, held by m, to r: an
// incremental to the newest backup of the volume on r if that backup's
// snapshot still exists (the changed extents come from m.Changed between
// the two snapshots), else a full backup. opts.Volume, Snapshot, Source,
// Parent and Changed are set here; the rest is passed through.
func BackupSnapshot(ctx context.Context, r *backupd.Repository, m *blockdev.Manager, volume, snap string, opts backupd.BackupOptions) (*backupd.Result, error) {
	dev, release, err := m.Open(ctx, volume+"@"+snap)
	if err != nil {
		return nil, fmt.Errorf("backup of volume %q: open snapshot %q: %w", volume, snap, err)
	}
	defer release()
	opts.Volume, opts.Snapshot, opts.Source = volume, snap, New(dev)
	opts.Parent, opts.Changed = "", nil
	if !opts.Full {
		if parent, err := r.Latest(ctx, volume); err == nil && parent.Snapshot != snap && hasSnapshot(ctx, m, volume, parent.Snapshot) {
			changed, err := Changed(ctx, m, volume, parent.Snapshot, snap)
			if err != nil {
				return nil, fmt.Errorf("backup of volume %q: %w", volume, err)
			}
			opts.Parent, opts.Changed = parent.ID, changed
		} else if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	return r.Backup(ctx, opts)
}

func hasSnapshot(ctx context.Context, m *blockdev.Manager, volume, snap string) bool {
	info, err := m.Volume(ctx, volume)
	if err != nil {
		return false
	}
	for _, s := range info.Snapshots {
		if s.Name == snap {
			return true
		}
	}
	return false
}
