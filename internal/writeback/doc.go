// Package writeback owns the "start writing this back now" hint Strata
// gives the kernel while it writes a file that will be fsynced:
// sync_file_range(2) with SYNC_FILE_RANGE_WRITE, which queues the range
// for storage without waiting, so that the final fsync finds most of the
// file already written and the storage writes overlap the copying. It is
// only a hint: durability still comes from fsync, and where the call does
// not exist or the filesystem does not support it, nothing happens.
//
// Its users: the fs backup target writing an object's temporary file, the
// plugin host writing that file through a descriptor the fs plugin passed
// (plugins), and a restore writing a volume image (backupd). It depends on
// nothing in Strata, so a target can use it and stay free of agent code.
package writeback
