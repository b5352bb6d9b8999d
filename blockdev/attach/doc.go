// Package attach owns host attach: a loop device (/dev/loopN) over a
// volume's FUSE file, a kernel NBD device (/dev/nbdN, through go-nbd's
// client) where nbd.ko exists, formatting (ext4, xfs) and mounting a
// filesystem on the device, freezing it for a clean snapshot, a clean
// detach, and cleaning what a killed server left behind.
//
// Loop devices (AttachLoop) are configured in one LOOP_CONFIGURE call
// with LO_FLAGS_AUTOCLEAR, a 4096-byte logical block size (the volumes'
// copy-on-write unit) and LO_FLAGS_DIRECT_IO (measured faster: see
// LoopOptions), read-only for snapshot files. The Loop holds the device
// open; if the process dies, the kernel detaches it once nothing else
// holds it. Detach refuses while a filesystem on the device is mounted.
//
// Kernel NBD (AttachNBD) needs nbd.ko: KernelNBD says whether it is
// there (loading it with modprobe) and why not. The device talks to the
// blockdev/nbd server over its unix socket, through go-nbd's client; the
// export's transmission flags are set on the device first (go-nbd does
// not pass them on), so the kernel has a write cache to flush and sends
// FLUSH and FUA.
//
// Start-up order after a crash: CleanStale(fuseDir) unmounts filesystems
// on loop devices backed by files in the dead FUSE mount and detaches
// those devices; then fuse.Mount(fuseDir) detaches the dead FUSE mount
// and mounts afresh.
//
// It works on the files and sockets the fuse and nbd frontends expose, not
// on volumes' contents: among Strata packages it may import only blockdev
// (and needs none of it today). It must not import snapshot, the agent,
// plugins or backupd.
package attach
