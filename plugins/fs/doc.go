// Package fs owns the built-in filesystem target: a plugins.Target that
// stores objects in any directory, NFS included, as regular files named by
// their keys ("a/b" is <dir>/a/b). Its URL is file:///abs/dir.
//
// Put writes a temporary file (".tmp-<random>") in the key's directory,
// starting writeback of every MiB as it is written (sync_file_range) so the
// final fsync overlaps the transfer, fsyncs it, renames it over the key and
// fsyncs the directory, so a reader sees a whole object or none, and a
// crash leaves either the old or the new object plus at most an invisible
// temporary file. PutIfAbsent links the fsynced temporary file to the key
// with link(2), which fails if the key exists: exactly one concurrent
// creator wins, on local filesystems and on NFS (where a lost reply is
// recognised by the link count). Keys cannot escape the directory: they
// are validated (plugins.ValidateKey) and every path is opened through
// os.Root (openat2 RESOLVE_BENEATH on Linux), so not even a symlink
// planted in the directory leads outside.
//
// A Put returns only once everything leading to its object is durable:
// each directory of the key is fsynced into its parent, once per process,
// whether the Put created it or found it (made by a Put that died before
// its fsync); and a PutIfAbsent that finds the key taken fsyncs that
// object and its directory before it reports plugins.ErrAlreadyExists, as
// it may be what an earlier attempt of the same Put left unsynced.
//
// Limits: a key cannot be both an object and a prefix directory of others
// ("a" and "a/b"); empty directories left by Delete stay. Temporary files
// of a writer killed mid-Put are never listed; New removes those untouched
// for a day (staleTempAge), in the background.
//
// Among Strata packages it imports only plugins (and plugins/targettest from
// its tests). It must not import snapshot, blockdev or backupd.
package fs
