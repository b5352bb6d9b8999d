// Package fuse owns Strata's FUSE filesystem: a mount with one file per
// volume ("<mnt>/vol-a") and a read-only file per snapshot, supporting read,
// write, fsync and fallocate (punch hole and zero range).
//
// The package serves blockdev.Volume and nothing else: among Strata packages
// it imports only blockdev. It must not import snapshot, the other frontends
// (nbd, attach), the agent, plugins or backupd.
//
// Not implemented yet: see issue 4.
package fuse
