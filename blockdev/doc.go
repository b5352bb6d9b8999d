// Package blockdev owns the block-device contract every frontend and the
// backup engine use: Volume (the device over a chain of layers), its
// errors, adapters from the snapshot store's volumes and snapshot views,
// and the Manager, which keeps a store's volumes open and hands out
// devices by export name ("vol", "vol@snap") with use counts, so the agent
// and the frontends never touch the store directly.
//
// Frontends (blockdev/nbd, blockdev/fuse, blockdev/attach) know only
// Volume; they must not import snapshot. This package must not import any
// frontend, plugins or backupd.
package blockdev
