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
// Limits: a key cannot be both an object and a prefix directory of others
// ("a" and "a/b"); empty directories left by Delete stay; temporary files
// of a writer killed mid-Put stay until removed (they are never listed).
//
// Among Strata packages it imports only plugins (and plugins/targettest from
// its tests). It must not import snapshot, blockdev or backupd.
package fs
