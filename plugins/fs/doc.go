// Package fs owns the built-in filesystem target: a plugins.Target that
// stores objects in any directory, NFS included, writing each object to a
// temporary file, fsyncing it, renaming it into place and fsyncing the
// directory so a reader sees a whole object or none.
//
// Among Strata packages it imports only plugins (and plugins/targettest from
// its tests). It must not import snapshot, blockdev or backupd.
//
// Not implemented yet: see issue 6.
package fs
