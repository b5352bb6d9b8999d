package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/blockdev/attach"
	"github.com/strata-block/strata/blockdev/fuse"
	"github.com/strata-block/strata/blockdev/nbd"
)

// host owns what the agent puts on the host: the FUSE mount with a file
// per export, and the loop or NBD devices and filesystem mounts of
// attached volumes.
type host struct {
	a *Agent

	mu      sync.Mutex
	fs      *fuse.FS
	fuseErr error
	files   map[string]func() // export name -> release of its device
	devs    map[string]*device
}

// device is an attached volume.
type device struct {
	loop *attach.Loop
	nbd  *attach.NBD
	at   Attachment
}

func newHost(a *Agent) *host {
	return &host{a: a, files: make(map[string]func()), devs: make(map[string]*device)}
}

func (h *host) mountDir() string { return filepath.Join(h.a.cfg.DataDir, mountDir) }

// start cleans what a killed agent left on the host and mounts FUSE.
func (h *host) start(ctx context.Context) error {
	log := h.a.log.With("component", "host")
	mode := h.a.cfg.FUSE
	if mode == "off" {
		h.fuseErr = errors.New("FUSE is off in the configuration")
		return nil
	}
	// EEXIST with a failing stat: a dead FUSE mount a killed agent left,
	// which CleanStale and fuse.Mount deal with.
	if err := os.MkdirAll(h.mountDir(), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("fuse mount point: %w", err)
	}
	if c, err := attach.CleanStale(ctx, h.mountDir(), log); err != nil {
		log.Warn("cleaning devices a previous agent left", "err", err)
	} else if len(c.Unmounted)+len(c.Detached) > 0 {
		log.Warn("released what a previous agent left", "unmounted", c.Unmounted, "detached", c.Detached)
	}
	fsys, err := fuse.Mount(ctx, h.mountDir(), &fuse.Options{Logger: h.a.log.With("component", "fuse")})
	if err != nil {
		if mode == "on" {
			return fmt.Errorf("fuse: %w", err)
		}
		h.fuseErr = err
		log.Warn("FUSE is unusable on this host; serving NBD only (volume files, loop attach and mount are unavailable)", "err", err)
		return nil
	}
	h.fs = fsys
	h.refresh()
	return nil
}

func (h *host) mountPoint() string {
	if h == nil {
		return ""
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fs == nil {
		return ""
	}
	return h.fs.Dir()
}

func (h *host) fuseError() string {
	if h == nil {
		return ""
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fuseErr == nil {
		return ""
	}
	return h.fuseErr.Error()
}

// filePath is name's file in the FUSE mount, "" without one.
func (h *host) filePath(name string) string {
	mp := h.mountPoint()
	if mp == "" {
		return ""
	}
	return filepath.Join(mp, name)
}

// refresh makes the FUSE files match the Manager's exports: new volumes
// and snapshots appear, deleted ones leave. A deleted snapshot's file that
// is still open leaves at once and releases its device when closed (so a
// snapshot made again under the name gets its own file); a volume's file
// that is still open leaves at a later refresh.
func (h *host) refresh() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fs == nil {
		return
	}
	ctx := context.Background()
	names, err := h.a.mgr.Exports(ctx)
	if err != nil {
		h.a.log.Warn("fuse refresh", "err", err)
		return
	}
	for name, release := range h.files {
		if slices.Contains(names, name) {
			continue
		}
		// A snapshot's file leaves at once even while open; a volume's
		// only once closed (ErrBusy: a later refresh removes it).
		err := h.fs.Detach(name, release)
		switch {
		case errors.Is(err, fuse.ErrNotFound):
			release() // not in the mount: nothing else releases it
		case errors.Is(err, fuse.ErrBusy):
			continue
		case err != nil:
			h.a.log.Warn("fuse: remove file", "export", name, "err", err)
			continue
		}
		delete(h.files, name)
	}
	for _, name := range names {
		if _, ok := h.files[name]; ok {
			continue
		}
		if !strings.Contains(name, "@") && h.a.notExclusive(name) != nil {
			continue // a restore has it (Exclusive)
		}
		dev, release, err := h.a.mgr.Open(ctx, name)
		if err != nil {
			h.a.log.Warn("fuse: open device", "export", name, "err", err)
			continue
		}
		if err := h.fs.Add(h.a.met.instrument(dev)); err != nil {
			release()
			h.a.log.Warn("fuse: add file", "export", name, "err", err)
			continue
		}
		h.files[name] = release
	}
}

func (h *host) removeFileLocked(name string, release func()) error {
	if err := h.fs.Remove(name); err != nil && !errors.Is(err, fuse.ErrNotFound) {
		if errors.Is(err, fuse.ErrBusy) {
			return fmt.Errorf("volume file %s is open: %w", h.fs.Path(name), blockdev.ErrInUse)
		}
		return err
	}
	delete(h.files, name)
	release()
	return nil
}

// release takes volume name's files (head and snapshots) out of the mount
// so the Manager sees it idle; refresh puts back what still exists.
func (h *host) release(name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fs == nil {
		return nil
	}
	for export, release := range h.files {
		vol, _, _ := blockdev.SplitExport(export)
		if vol != name {
			continue
		}
		if err := h.removeFileLocked(export, release); err != nil {
			return err
		}
	}
	return nil
}

// grown passes a volume's new size on to its FUSE file and to the loop
// device attached over it. A kernel NBD device keeps the size it was
// attached with until it is attached again (the protocol has no resize).
func (h *host) grown(ctx context.Context, name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fs == nil {
		return nil
	}
	if _, ok := h.files[name]; !ok {
		return nil
	}
	if err := h.fs.Resized(name); err != nil {
		return err
	}
	d, ok := h.devs[name]
	switch {
	case !ok:
		return nil
	case d.loop != nil:
		return d.loop.UpdateSize(ctx)
	default:
		h.a.log.Warn("volume grew; its NBD device keeps the old size until it is attached again", "volume", name, "device", d.at.Device)
		return nil
	}
}

// stop unmounts and detaches everything (on shutdown). With keep, the
// attachments stay recorded so that the next start restores them.
func (h *host) stop(ctx context.Context, keep bool) {
	h.mu.Lock()
	mounts := make(map[string]string, len(h.devs))
	for name, d := range h.devs {
		mounts[name] = d.at.MountPoint
	}
	h.mu.Unlock()
	var failed []string
	for _, name := range stopOrder(mounts) {
		if err := h.detach(ctx, name, !keep); err != nil {
			failed = append(failed, name)
		}
	}
	// Once more: one still busy may have been so for a moment only.
	left := false
	for _, name := range failed {
		if err := h.detach(ctx, name, !keep); err != nil {
			h.a.log.Error("shutdown: detach", "volume", name, "err", err)
			h.syncMount(name)
			left = true
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fs == nil {
		return
	}
	closeFS := h.fs.Close
	if left {
		// A loop device stays attached over a file in the mount: the
		// mount stays too (dead), for the next start to clean both up.
		closeFS = h.fs.Abandon
	}
	if err := closeFS(ctx); err != nil {
		h.a.log.Error("shutdown: fuse unmount", "err", err)
	}
	for name, release := range h.files {
		release()
		delete(h.files, name)
	}
	h.fs = nil
}

// stopOrder orders the attached volumes (name to mount point, "" if not
// mounted) for detaching: a filesystem mounted inside another one's tree
// before that one (the other's unmount fails while it is there), that is
// deeper mount points first; then by name.
func stopOrder(mounts map[string]string) []string {
	names := make([]string, 0, len(mounts))
	for name := range mounts {
		names = append(names, name)
	}
	depth := func(dir string) int {
		if dir == "" {
			return 0
		}
		return strings.Count(filepath.Clean(dir), string(filepath.Separator)) + 1
	}
	slices.SortFunc(names, func(x, y string) int {
		if d := depth(mounts[y]) - depth(mounts[x]); d != 0 {
			return d
		}
		return strings.Compare(x, y)
	})
	return names
}

// attach attaches volume name (or "vol@snap", read-only) as a loop device
// over its FUSE file, or as a kernel NBD device.
func (h *host) attach(ctx context.Context, name string, useNBD bool) (Attachment, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if d, ok := h.devs[name]; ok {
		return d.at, fmt.Errorf("volume %q is already attached as %s: %w", name, d.at.Device, blockdev.ErrExists)
	}
	log := h.a.log.With("volume", name)
	d := &device{}
	if useNBD {
		_, snap, _ := blockdev.SplitExport(name)
		n, err := attach.AttachNBD(ctx, "unix", NBDSocket(h.a.cfg.DataDir), name, nbd.ExportFlags(snap != ""), log)
		if err != nil {
			if errors.Is(err, attach.ErrNoKernelNBD) {
				err = fmt.Errorf("%w: %w", errUnavailable, err)
			}
			return Attachment{}, err
		}
		d.nbd, d.at = n, Attachment{Device: n.Path, Kind: "nbd"}
	} else {
		if h.fs == nil {
			return Attachment{}, fmt.Errorf("loop attach needs the FUSE mount (%v): %w", h.fuseErr, errUnavailable)
		}
		if _, ok := h.files[name]; !ok {
			return Attachment{}, fmt.Errorf("volume %q has no file in the mount: %w", name, blockdev.ErrNotFound)
		}
		_, snap, _ := blockdev.SplitExport(name)
		l, err := attach.AttachLoop(ctx, h.fs.Path(name), &attach.LoopOptions{ReadOnly: snap != "", Logger: log})
		if err != nil {
			return Attachment{}, err
		}
		d.loop, d.at = l, Attachment{Device: l.Path, Kind: "loop"}
	}
	h.devs[name] = d
	return d.at, nil
}

// detach unmounts the agent's mount of volume name, if any, and detaches
// its device. With forget, the attachment leaves the persisted state.
func (h *host) detach(ctx context.Context, name string, forget bool) error {
	h.mu.Lock()
	d, ok := h.devs[name]
	h.mu.Unlock()
	if !ok {
		if forget {
			return h.a.state.set(name, nil)
		}
		return nil
	}
	if d.at.MountPoint != "" {
		if h.ours(d.at) {
			if err := attach.Unmount(ctx, d.at.MountPoint); err != nil {
				return fmt.Errorf("volume %q: unmount %s: %w", name, d.at.MountPoint, err)
			}
		} else {
			h.a.log.Warn("recorded mount point does not hold the volume's filesystem; not unmounting it", "volume", name, "dir", d.at.MountPoint)
		}
		d.at.MountPoint, d.at.FSType = "", ""
	}
	var err error
	if d.loop != nil {
		err = d.loop.Detach(ctx)
	} else {
		err = d.nbd.Detach(ctx)
	}
	if err != nil {
		if errors.Is(err, attach.ErrBusy) {
			err = fmt.Errorf("%w: %w", blockdev.ErrInUse, err)
		}
		return fmt.Errorf("volume %q: detach %s: %w", name, d.at.Device, err)
	}
	h.mu.Lock()
	delete(h.devs, name)
	h.mu.Unlock()
	if forget {
		return h.a.state.set(name, nil)
	}
	return nil
}

func (h *host) setMount(name, dir, fstype string) (Attachment, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.devs[name]
	if !ok {
		return Attachment{}, fmt.Errorf("volume %q is not attached: %w", name, blockdev.ErrNotFound)
	}
	d.at.MountPoint, d.at.FSType = dir, fstype
	return d.at, nil
}

// syncMount writes back the filesystem of volume name that stays mounted
// (its unmount at shutdown failed: a process has files open on it) before
// the FUSE mount and the volumes close under it: its dirty pages could not
// be written back afterwards, and the next start only detaches the stale
// mount.
func (h *host) syncMount(name string) {
	at, ok := h.live(name)
	if !ok || !h.ours(at) {
		return
	}
	f, err := os.Open(at.MountPoint)
	if err == nil {
		err = unix.Syncfs(int(f.Fd()))
		f.Close()
	}
	if err != nil {
		h.a.log.Error("shutdown: write back a filesystem still mounted", "volume", name, "dir", at.MountPoint, "err", err)
		return
	}
	h.a.log.Warn("shutdown: filesystem still mounted (in use); written back, and left to the next start", "volume", name, "dir", at.MountPoint)
}

// live returns the attachment of volume name that this process made, if
// any. The state file may record one that is not live: its re-attach
// after a restart failed, and its device name and mount point may now be
// someone else's.
func (h *host) live(name string) (Attachment, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.devs[name]
	if !ok {
		return Attachment{}, false
	}
	return d.at, true
}

// ours reports whether at's mount point holds the filesystem on at's
// device (checked before unmounting or freezing it).
func (h *host) ours(at Attachment) bool {
	if at.MountPoint == "" || at.Device == "" {
		return false
	}
	ok, err := attach.MountedFrom(at.MountPoint, at.Device)
	if err != nil {
		h.a.log.Warn("check mount", "dir", at.MountPoint, "device", at.Device, "err", err)
	}
	return ok
}
