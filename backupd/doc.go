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
// The engine is Repository (issue 7):
//
//	r := backupd.Open(target, &backupd.Options{Key: key, Logger: log})
//	res, err := r.BackupVolume(ctx, manager, "vol-a", "s2", backupd.BackupOptions{Progress: fn})
//	// or r.Backup(ctx, backupd.BackupOptions{Volume: "vol-a", Snapshot: "s2",
//	//	Source: snapDev, Parent: lastID, Changed: changed})
//	_, err = r.Restore(ctx, res.ManifestKey, backupd.VolumeDestination{V: dev}, backupd.RestoreOptions{DestZeroed: true})
//	rep, err := r.Verify(ctx, nil, backupd.VerifyOptions{ReadData: true})
//	err = r.Delete(ctx, "vol-a", id)
//	pr, err := r.Prune(ctx, backupd.PruneOptions{KeepLast: 7, KeepWithin: 7 * 24 * time.Hour})
//	gr, err := r.GC(ctx, backupd.GCOptions{})
//	infos, err := r.List(ctx, "vol-a") // also Latest, FindBackup, LoadManifest
//
// Vocabulary: a chunk is 8 KiB of a volume at an aligned offset, named by
// the SHA-256 of its plaintext (when encrypted, by the HMAC-SHA-256 of that
// SHA-256 under the id key; records written before that: of the plaintext);
// packs hold chunk records; a pack index lists a pack's chunks; a map page lists the
// chunk ids of 256 consecutive chunks; a manifest lists a backup's pages
// and its whole-volume digest. FORMAT.md documents every format, the
// commit order, restore resumption and the two-phase GC protocol with its
// assumption (GCOptions.Grace longer than every BackupOptions.MaxDuration
// plus GCOptions.Margin, 15 minutes by default: a mark's Put latency and
// the hosts' clock difference).
//
// Errors wrap the sentinels in errors.go (ErrCorrupt, ErrMissing,
// ErrInvalid, ErrKey, ErrTooSlow, ErrMismatch) or the target's plugins
// classes; they name the volume, backup, chunk and pack concerned.
//
// The coordinator owns system backup and restore and fencing: a system
// manifest is committed only after every volume backup it names is
// acknowledged durable, and it records the backup id carried by each
// acknowledgement, checked on the target — never a field read back from
// state that something else updates. It lives in backupd/coordinator and
// uses BackupOptions.Tags (TagSystem, TagToken: such backups are held,
// see ErrHeld) and Result; FORMAT.md documents the system manifest.
//
// It reaches volumes only through the agent API (blockdev/agent) or
// blockdev, and targets only through the plugins interface. It must not
// import snapshot, the frontends (blockdev/nbd, blockdev/fuse,
// blockdev/attach) or any target implementation (plugins/fs, plugins/s3);
// its tests use plugins/fs in-process as a real target and blockdev's
// Manager for real volumes.
package backupd
