// Package fuse owns Strata's FUSE filesystem: a mount holding one regular
// file per exported device, served with go-fuse/v2 (fs package).
//
// # Naming
//
// The file of a volume's head is named after the volume ("<mnt>/vol-a",
// read-write, size = volume size); the file of a snapshot is
// "<mnt>/vol-a@snap1" (read-only, mode 0444). Both parts match
// [a-z0-9][a-z0-9._-]{0,62}, so a name is a valid file name and never a
// path, and "@" cannot be confused with a volume name. The names are the
// ones blockdev.Volume.Name and the NBD export list use.
//
// # Lifecycle
//
// Mount mounts an empty directory; the owner (the agent, issue 5) calls
// Add for every volume and snapshot it exports and Remove when one goes
// away: files appear and disappear while mounted, and the kernel's cached
// entries are invalidated. Remove refuses (ErrBusy) while the file is open,
// because a loop device holding the file would otherwise keep a device
// nobody can name. Detach is the exception for read-only files (a deleted
// snapshot's): like unlink(2), the name leaves at once and the device is
// released when the last open handle is closed, so a snapshot made again
// under the name gets its own file. Close unmounts: it detaches the mount (no new opens),
// waits for open files to be closed until its context ends, then aborts
// the connection, waits for the requests in flight to finish, and flushes
// every device written through the mount. A dead mount left on the
// directory by a killed process is detached by Mount; loop devices over it
// must be cleaned first (attach.CleanStale).
//
// # Operations and errors
//
// read, write (concurrent, up to 1 MiB per request), fsync → Volume.Flush,
// close (FUSE FLUSH) of a handle that wrote → Volume.Flush, O_SYNC/O_DSYNC
// handles write with FUA, fallocate PUNCH_HOLE|KEEP_SIZE → Volume.Trim,
// ZERO_RANGE (with or without KEEP_SIZE) → Volume.Zero; any other
// fallocate mode (including plain allocation) is EOPNOTSUPP. The size of a
// file is its volume's and cannot change: truncate to another size is
// EPERM. Errors: a write or zero range crossing the end of the file is
// EFBIG (the file has a fixed maximum size, as RLIMIT_FSIZE would give);
// reads at or past the end return 0 bytes, as for any file; opening a
// snapshot for writing, or writing to a read-only device, is EROFS (losetup
// then falls back to a read-only loop device); a request cancelled by an
// interrupt before it starts is EINTR; ENOSPC/EDQUOT from the store are
// ENOSPC; blockdev.ErrInvalidArgument is EINVAL; any other device failure
// is EIO, logged with the volume, the operation and the error.
//
// # Mount options (chosen by measurement, see Options and
// benchmarks/RESULTS.md "FUSE (issue 4)")
//
// Files are opened with FOPEN_DIRECT_IO and FOPEN_PARALLEL_DIRECT_WRITES,
// the connection has CAP_ASYNC_DIO, MaxWrite 1 MiB (max_pages 256), 128
// background requests, readahead off; see defaultMountOptions for why.
//
// The package serves blockdev.Volume and nothing else: among Strata packages
// it imports only blockdev. It must not import snapshot, the other frontends
// (nbd, attach), the agent, plugins or backupd.
package fuse
