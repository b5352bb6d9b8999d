package backupd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/plugins"
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

// ReadAt reads back what the device holds at off.
func (d VolumeDestination) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	return d.V.ReadAt(ctx, p, off)
}

// BackupVolume backs up snapshot snap of volume, held by m: an incremental
// to the newest backup of the volume on r if that backup's snapshot still
// exists (the changed extents come from m.Changed between the two
// snapshots, in time proportional to the change), else a full backup.
// The parent's snapshot must be the very one it was taken from: the same
// name and creation time (SameSnapshot). A snapshot deleted and made again
// under its name, or another host's volume of the same name backed up to
// the same target, would otherwise make the changes since it stand for
// the changes since the parent, and the backup would silently miss the
// writes in between. opts.Volume, Snapshot, SnapshotCreated, Source,
// Parent and Changed are set here; the rest (Full, Tags, Progress, ...) is
// passed through.
func (r *Repository) BackupVolume(ctx context.Context, m *blockdev.Manager, volume, snap string, opts BackupOptions) (*Result, error) {
	info, err := m.Volume(ctx, volume)
	if err != nil {
		return nil, fmt.Errorf("backup of volume %q: %w", volume, err)
	}
	si, ok := info.Snapshot(snap)
	if !ok {
		return nil, fmt.Errorf("backup of volume %q: snapshot %q: %w", volume, snap, blockdev.ErrNotFound)
	}
	dev, release, err := m.Open(ctx, volume+"@"+snap)
	if err != nil {
		return nil, fmt.Errorf("backup of volume %q: open snapshot %q: %w", volume, snap, err)
	}
	defer release()
	opts.Volume, opts.Snapshot, opts.SnapshotCreated, opts.Source = volume, snap, si.Created, dev
	opts.Parent, opts.Changed = "", nil
	if !opts.Full {
		parent, err := r.Latest(ctx, volume)
		switch {
		case err != nil && !errors.Is(err, plugins.ErrNotFound):
			// The backups could not all be read (a target that does not
			// answer): a full backup would hide that and cost the volume.
			return nil, fmt.Errorf("backup of volume %q: finding the newest backup, the parent of an incremental: %w", volume, err)
		case err == nil && parent.Snapshot != snap && SameSnapshot(info, parent) && below(info, parent.Snapshot, snap):
			// (A parent snapshot newer than snap, when an older snapshot
			// is backed up after it: no changes lead from it to snap, so
			// the backup is full.)
			changed, err := m.Changed(ctx, volume, parent.Snapshot, snap)
			if err != nil {
				return nil, fmt.Errorf("backup of volume %q: changed extents from %q to %q: %w", volume, parent.Snapshot, snap, err)
			}
			if changed == nil {
				changed = []Extent{}
			}
			opts.Parent, opts.Changed = parent.ID, changed
			if err := stillSame(ctx, m, volume, snap, si.Created, &parent); err != nil {
				return nil, err
			}
			return r.Backup(ctx, opts)
		}
	}
	if err := stillSame(ctx, m, volume, snap, si.Created, nil); err != nil {
		return nil, err
	}
	return r.Backup(ctx, opts)
}

// below reports whether snapshot a lies below snapshot b in the volume's
// chain (info.Snapshots lists it bottom first): only then do changes lead
// from a to b. Their creation times cannot say it: the clock may have
// stepped back between the two.
func below(info blockdev.VolumeInfo, a, b string) bool {
	ia := slices.IndexFunc(info.Snapshots, func(si blockdev.SnapshotInfo) bool { return si.Name == a })
	ib := slices.IndexFunc(info.Snapshots, func(si blockdev.SnapshotInfo) bool { return si.Name == b })
	return ia >= 0 && ib >= 0 && ia < ib
}

// stillSame checks, once the snapshot is open and the changed extents are
// known, that snapshot snap (and the parent's, if any) are still the ones
// identified before: a snapshot deleted or reverted away and made again
// under its name meanwhile (listing the target's backups can take
// seconds) would make the view, the extents and the recorded identity
// describe different snapshots, and the incremental would silently miss
// writes.
func stillSame(ctx context.Context, m *blockdev.Manager, volume, snap string, created time.Time, parent *BackupInfo) error {
	info, err := m.Volume(ctx, volume)
	if err != nil {
		return fmt.Errorf("backup of volume %q: %w", volume, err)
	}
	si, ok := info.Snapshot(snap)
	if !ok || !si.Created.Equal(created) || (parent != nil && !SameSnapshot(info, *parent)) {
		return fmt.Errorf("backup of volume %q: its snapshots changed while the backup was being prepared (snapshot %q deleted, reverted away or made again); run it again: %w", volume, snap, ErrBusy)
	}
	return nil
}

// SameSnapshot reports whether the volume info describes still has the
// snapshot backup b was taken from: one of that name created at the time
// b's manifest records. A backup written before the time was recorded
// matches no snapshot (the safe side: a full backup, or no reuse).
func SameSnapshot(info blockdev.VolumeInfo, b BackupInfo) bool {
	s, ok := info.Snapshot(b.Snapshot)
	return ok && !b.SnapshotCreated.IsZero() && s.Created.Equal(b.SnapshotCreated)
}
