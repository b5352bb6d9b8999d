package backupd

import (
	"context"
	"fmt"

	"github.com/strata-block/strata/blockdev"
)

// VolumeDestination is a writable blockdev.Volume (a volume's head,
// detached from any user) as a Destination; Flush is the device's flush.
type VolumeDestination struct{ V blockdev.Volume }

// Size returns the device size.
func (d VolumeDestination) Size() int64 { return d.V.Size() }

// WriteAt writes to the device.
func (d VolumeDestination) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	return d.V.WriteAt(ctx, p, off, 0)
}

// Zero trims [off, off+length): it then reads as zeros and holds no data.
func (d VolumeDestination) Zero(ctx context.Context, off, length int64) error {
	return d.V.Trim(ctx, off, length, 0)
}

// Flush flushes the device.
func (d VolumeDestination) Flush(ctx context.Context) error { return d.V.Flush(ctx) }

// BackupVolume backs up snapshot snap of volume, held by m: an incremental
// to the newest backup of the volume on r if that backup's snapshot still
// exists (the changed extents come from m.Changed between the two
// snapshots, in time proportional to the change), else a full backup.
// opts.Volume, Snapshot, Source, Parent and Changed are set here; the rest
// (Full, Tags, Progress, ...) is passed through.
func (r *Repository) BackupVolume(ctx context.Context, m *blockdev.Manager, volume, snap string, opts BackupOptions) (*Result, error) {
	dev, release, err := m.Open(ctx, volume+"@"+snap)
	if err != nil {
		return nil, fmt.Errorf("backup of volume %q: open snapshot %q: %w", volume, snap, err)
	}
	defer release()
	opts.Volume, opts.Snapshot, opts.Source = volume, snap, dev
	opts.Parent, opts.Changed = "", nil
	if !opts.Full {
		if parent, err := r.Latest(ctx, volume); err == nil && parent.Snapshot != snap && hasSnapshot(ctx, m, volume, parent.Snapshot) {
			changed, err := m.Changed(ctx, volume, parent.Snapshot, snap)
			if err != nil {
				return nil, fmt.Errorf("backup of volume %q: changed extents from %q to %q: %w", volume, parent.Snapshot, snap, err)
			}
			if changed == nil {
				changed = []Extent{}
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
