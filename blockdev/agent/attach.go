package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/blockdev/attach"
)

// attach attaches a volume (or "vol@snap") to a host device and records it.
func (a *Agent) attach(ctx context.Context, name string, req AttachRequest) (Attachment, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.attachLocked(ctx, name, req)
}

// attachLocked is attach; callers hold a.mu.
func (a *Agent) attachLocked(ctx context.Context, name string, req AttachRequest) (Attachment, error) {
	if _, _, err := blockdev.SplitExport(name); err != nil {
		return Attachment{}, err
	}
	if _, err := a.mgr.Volume(ctx, volumeOf(name)); err != nil {
		return Attachment{}, err
	}
	if err := a.notExclusive(name); err != nil {
		return Attachment{}, err
	}
	at, err := a.host.attach(ctx, name, req.NBD)
	if err != nil {
		return Attachment{}, err
	}
	if err := a.state.set(name, &at); err != nil {
		a.undoAttach(ctx, name, false)
		return Attachment{}, err
	}
	a.log.Info("attached", "volume", name, "device", at.Device, "kind", at.Kind)
	return at, nil
}

// undoAttach detaches what a failed request attached, whatever became of
// the request's context (a client gone during mkfs must not leave the
// device attached and recorded).
func (a *Agent) undoAttach(ctx context.Context, name string, forget bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := a.host.detach(ctx, name, forget); err != nil {
		a.log.Error("detaching after a failed request", "volume", name, "err", err)
	}
}

func (a *Agent) detach(ctx context.Context, name string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.state.get(name); !ok {
		return fmt.Errorf("volume %q is not attached: %w", name, blockdev.ErrNotFound)
	}
	if err := a.host.detach(ctx, name, true); err != nil {
		return err
	}
	a.log.Info("detached", "volume", name)
	return nil
}

// mount attaches the volume if needed, formats it when asked, and mounts
// it on dir.
func (a *Agent) mount(ctx context.Context, name string, req MountRequest) (Attachment, error) {
	if req.Dir == "" || !filepath.IsAbs(req.Dir) {
		return Attachment{}, fmt.Errorf("mount point %q: must be an absolute path: %w", req.Dir, blockdev.ErrInvalidArgument)
	}
	if req.MkFS != "" && req.MkFS != attach.Ext4 && req.MkFS != attach.XFS {
		return Attachment{}, fmt.Errorf("mkfs %q: want ext4 or xfs: %w", req.MkFS, blockdev.ErrInvalidArgument)
	}
	if fi, err := os.Stat(req.Dir); err != nil {
		return Attachment{}, fmt.Errorf("mount point: %w: %w", err, blockdev.ErrInvalidArgument)
	} else if !fi.IsDir() {
		return Attachment{}, fmt.Errorf("mount point %s: not a directory: %w", req.Dir, blockdev.ErrInvalidArgument)
	}
	// Recorded, and later unmounted, by its real path: a symlink on the
	// way that someone retargets must not make a later unmount (or the
	// next start's remount) act on another directory.
	dir, err := filepath.EvalSymlinks(req.Dir)
	if err != nil {
		return Attachment{}, fmt.Errorf("mount point %s: %w", req.Dir, blockdev.ErrInvalidArgument)
	}
	if data, err := filepath.EvalSymlinks(a.cfg.DataDir); err == nil && (dir == data || strings.HasPrefix(dir, data+string(filepath.Separator))) {
		return Attachment{}, fmt.Errorf("mount point %s: inside the data directory %s: %w", req.Dir, a.cfg.DataDir, blockdev.ErrInvalidArgument)
	}
	req.Dir = dir
	// All under a.mu: two mounts of one volume (or a detach racing a
	// mount) must not both act on what they saw of its attachment.
	a.mu.Lock()
	defer a.mu.Unlock()
	// The live attachment, not the record: a record whose re-attach failed
	// after a restart names a device (and mount point) that may now be
	// another program's; attaching again replaces it.
	at, attached := a.host.live(name)
	if attached && at.MountPoint != "" {
		return at, fmt.Errorf("volume %q is already mounted on %s: %w", name, at.MountPoint, blockdev.ErrExists)
	}
	if !attached {
		if at, err = a.attachLocked(ctx, name, AttachRequest{}); err != nil {
			return Attachment{}, err
		}
	}
	undo := func() {
		if !attached {
			a.undoAttach(ctx, name, true)
		}
	}
	fstype := req.MkFS
	if fstype != "" {
		if err := attach.Mkfs(ctx, at.Device, fstype); err != nil {
			undo()
			return Attachment{}, err
		}
	} else {
		var err error
		if fstype, err = probeFS(ctx, at.Device); err != nil {
			undo()
			return Attachment{}, err
		}
	}
	if err := attach.Mount(ctx, at.Device, req.Dir, fstype, mountOptions(name, fstype)); err != nil {
		undo()
		return Attachment{}, err
	}
	if at, err = a.host.setMount(name, req.Dir, fstype); err == nil {
		err = a.state.set(name, &at)
	}
	if err != nil {
		// Not recorded: nothing would unmount it.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if uerr := attach.Unmount(uctx, req.Dir); uerr != nil {
			a.log.Error("unmounting after a failed mount request", "volume", name, "dir", req.Dir, "err", uerr)
		} else if _, serr := a.host.setMount(name, "", ""); serr == nil {
			undo()
		}
		return Attachment{}, err
	}
	a.log.Info("mounted", "volume", name, "device", at.Device, "dir", req.Dir, "fs", fstype)
	return at, nil
}

// umount unmounts the volume; it stays attached.
func (a *Agent) umount(ctx context.Context, name string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	at, ok := a.host.live(name)
	if !ok {
		if rec, recorded := a.state.get(name); recorded && rec.MountPoint != "" {
			return fmt.Errorf("volume %q is recorded as mounted on %s, but it could not be attached again since the restart (see the log); detach it to forget the record: %w", name, rec.MountPoint, blockdev.ErrNotFound)
		}
	}
	if !ok || at.MountPoint == "" {
		return fmt.Errorf("volume %q is not mounted: %w", name, blockdev.ErrNotFound)
	}
	if a.host.ours(at) {
		if err := attach.Unmount(ctx, at.MountPoint); err != nil {
			return fmt.Errorf("volume %q: %w", name, err)
		}
	} else {
		a.log.Warn("recorded mount point does not hold the volume's filesystem; forgetting it without unmounting", "volume", name, "dir", at.MountPoint)
	}
	at, err := a.host.setMount(name, "", "")
	if err != nil {
		return err
	}
	return a.state.set(name, &at)
}

// restoreAttachments re-attaches and re-mounts what the state records
// (after a restart). Failures are logged and the record kept, so that a
// person can see and retry them.
func (a *Agent) restoreAttachments(ctx context.Context) {
	all := a.state.all()
	mounts := make(map[string]string, len(all))
	for name, saved := range all {
		mounts[name] = saved.MountPoint
	}
	// Outer mount points before those inside them (stopOrder reversed).
	for _, name := range slices.Backward(stopOrder(mounts)) {
		saved := all[name]
		at, err := a.host.attach(ctx, name, saved.Kind == "nbd")
		if err != nil {
			a.log.Error("restore attachment", "volume", name, "err", err)
			continue
		}
		if saved.MountPoint != "" {
			// mount(2) follows symlinks: a directory on the recorded
			// path replaced by a symlink since must not take the
			// filesystem elsewhere (a symlink to /etc, say). mount
			// recorded the path with every symlink resolved.
			if real, err := filepath.EvalSymlinks(saved.MountPoint); err != nil || real != saved.MountPoint {
				a.log.Error("restore mount: the recorded mount point is no longer a directory on that path (a symlink now, or gone); not mounting", "volume", name, "dir", saved.MountPoint, "resolves_to", real, "err", err)
			} else if err := attach.Mount(ctx, at.Device, saved.MountPoint, saved.FSType, mountOptions(name, saved.FSType)); err != nil {
				// The mount stays recorded (the next start tries again;
				// umount forgets it), and nothing acts on the directory
				// unless it holds this device's filesystem.
				a.log.Error("restore mount: the volume is attached but not mounted", "volume", name, "device", at.Device, "dir", saved.MountPoint, "err", err)
			}
			if at, err = a.host.setMount(name, saved.MountPoint, saved.FSType); err != nil {
				a.log.Error("restore mount", "volume", name, "err", err)
				continue
			}
		}
		if err := a.state.set(name, &at); err != nil {
			a.log.Error("restore attachment: save state", "volume", name, "err", err)
		}
		a.log.Info("restored attachment", "volume", name, "device", at.Device, "mount", at.MountPoint)
	}
}

// mountOptions are the options export is mounted with: a snapshot
// read-only, and without the journal replay a read-only device cannot
// take (a snapshot of a mounted ext4 or xfs has a journal to replay; xfs
// also refuses a second mount of the same UUID, the head's).
func mountOptions(export, fstype string) *attach.MountOptions {
	_, snap, _ := blockdev.SplitExport(export)
	opts := &attach.MountOptions{ReadOnly: snap != ""}
	if opts.ReadOnly && fstype == attach.Ext4 {
		opts.Data = "noload"
	} else if opts.ReadOnly && fstype == attach.XFS {
		opts.Data = "norecovery,nouuid"
	}
	return opts
}

func volumeOf(export string) string {
	vol, _, _ := blockdev.SplitExport(export)
	return vol
}

// probeFS names the filesystem on dev from its superblock: ext4 (magic
// 0xEF53 at byte 1080) or xfs ("XFSB" at byte 0).
func probeFS(ctx context.Context, dev string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	f, err := os.Open(dev)
	if err != nil {
		return "", fmt.Errorf("probe filesystem on %s: %w", dev, err)
	}
	defer f.Close()
	sb := make([]byte, 2048)
	if _, err := f.ReadAt(sb, 0); err != nil {
		return "", fmt.Errorf("probe filesystem on %s: %w", dev, err)
	}
	switch {
	case string(sb[:4]) == "XFSB":
		return attach.XFS, nil
	case sb[1080] == 0x53 && sb[1081] == 0xef:
		return attach.Ext4, nil
	}
	return "", fmt.Errorf("%s holds no ext4 or xfs filesystem; pass --mkfs ext4|xfs to format it: %w", dev, blockdev.ErrInvalidArgument)
}

// snapshot takes a snapshot. When the agent has the volume mounted, the
// filesystem is frozen around it (FIFREEZE: ext4 and xfs write back and
// checkpoint their journals), so the snapshot is a clean filesystem rather
// than merely a crash-consistent one.
func (a *Agent) snapshot(ctx context.Context, name, snap string) (blockdev.SnapshotInfo, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.notExclusive(name); err != nil {
		return blockdev.SnapshotInfo{}, err
	}
	// Freeze only a filesystem of ours: FIFREEZE freezes whatever holds
	// the directory (the host's root, if the volume is not mounted there
	// any more), and a snapshot on that filesystem would then hang.
	if at, ok := a.host.live(name); ok && at.MountPoint != "" && a.host.ours(at) {
		if err := attach.Freeze(ctx, at.MountPoint); err != nil {
			return blockdev.SnapshotInfo{}, fmt.Errorf("volume %q: freeze %s before the snapshot: %w", name, at.MountPoint, err)
		}
		defer func() {
			if err := attach.Thaw(context.WithoutCancel(ctx), at.MountPoint); err != nil {
				a.log.Error("thaw after snapshot", "volume", name, "dir", at.MountPoint, "err", err)
			}
		}()
	}
	return a.mgr.Snapshot(ctx, name, snap)
}
