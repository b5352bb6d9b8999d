// Package snapshot owns Strata's copy-on-write layer store: the on-disk
// format of volumes and their layers, the layer chain, O(1) snapshots,
// online merge on snapshot delete, revert, clone, changed-block tracking,
// allocation extents and scrub.
//
// Vocabulary. A Store is a directory holding volumes and a shared pool of
// layers. A volume is a chain of layers: zero or more sealed layers (each
// one the content written between two snapshots) below exactly one
// writable head. A snapshot names a sealed layer; its content is that layer
// over every layer below it. Sealed layers are immutable in content; several
// volumes (clones) may share them, and a layer is freed only when no volume
// references it. The copy-on-write unit is BlockSize (4 KiB).
//
// The format is described in FORMAT.md beside this file.
//
// This package knows nothing of NBD, FUSE, plugins or backups: it must not
// import any other Strata package.
package snapshot
