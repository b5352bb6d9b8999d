// Package blockdev owns the block-device contract every frontend and the
// backup engine use: Volume (the device over a chain of layers), its
// errors, and adapters from the snapshot store's volumes and snapshot
// views. The volume Manager (issue 5) will live here too.
//
// Frontends (blockdev/nbd, blockdev/fuse, blockdev/attach) know only
// Volume; they must not import snapshot. This package must not import any
// frontend, plugins or backupd.
package blockdev
