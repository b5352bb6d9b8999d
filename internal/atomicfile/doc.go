// Package atomicfile owns the one way Strata replaces a small file so that
// a crash leaves either the old content or the new, never a mix: write a
// temporary file beside it, sync it, rename it over the target, sync the
// directory. The snapshot store's metadata, the agent's state, the target
// registry and the restore state file all use it.
package atomicfile
