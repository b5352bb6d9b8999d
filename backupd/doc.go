// Package backupd owns volume backups and the coordinator.
//
// The volume backup engine reads one snapshot, uploads only the extents
// changed since the last acknowledged backup on the same target, as
// content-addressed, compressed, optionally encrypted chunks, and writes a
// manifest that maps the whole volume. A backup is acknowledged only after
// every chunk is acknowledged by the target and the manifest has been
// written atomically, read back and checked. The engine also owns restore,
// verify, delete, retention and garbage collection.
//
// The coordinator owns system backup and restore and fencing: a system
// manifest is committed only after every volume backup it names is
// acknowledged durable, and it records the backup id carried by each
// acknowledgement, checked on the target — never a field read back from
// state that something else updates.
//
// It reaches volumes only through the agent API (blockdev/agent) or
// blockdev, and targets only through the plugins interface. It must not
// import snapshot, the frontends (blockdev/nbd, blockdev/fuse,
// blockdev/attach) or any target implementation (plugins/fs, plugins/s3).
//
// The engine (issue 7) is Repository: Open(target, opts), then Backup,
// Restore, Verify, List, Delete, Prune and GC. Its formats, the commit
// order and the GC protocol are in FORMAT.md. backupd does not import
// blockdev (which is built on snapshot); backupd/volsource adapts
// blockdev volumes to Source and Destination. The coordinator (issue 8) is
// not implemented yet.
package backupd
