// Package attach owns host attach: a loop device (/dev/loopN) over a volume's
// FUSE file, a kernel NBD device (/dev/nbdN, through go-nbd's client) where
// nbd.ko exists, formatting and mounting a filesystem on the device, and a
// clean detach.
//
// It works on the files and sockets the fuse and nbd frontends expose, not
// on volumes' contents: among Strata packages it may import only blockdev.
// It must not import snapshot, the agent, plugins or backupd.
//
// Not implemented yet: see issue 4.
package attach
