// Package coordinator owns system backups and system restore: a system
// backup is every volume of every agent backed up to its own target plus
// the configuration (agents, volumes and their settings, targets by name
// and URL, never credentials), committed as one system manifest that is
// written only after every volume backup it names is acknowledged durable
// and checked on its target by the coordinator itself.
//
// The fencing protocol (DESIGN.md, "The coordinator and fencing"):
//
//  1. Open system backup S with fencing token T: T is the next value of a
//     persisted counter, written in the same bbolt transaction that
//     records S as open, before any agent hears of it.
//  2. Capture the configuration from every agent's API and the target
//     registry, and persist it with S.
//  3. Have each volume's agent take a fresh snapshot (all of them at one
//     instant with a consistency group: writes held on every agent, then
//     snapshots, then release) and back it up to the volume's target with
//     the tags strata.system=S and strata.token=T.
//  4. An agent's answer is an acknowledgement (S, T, agent, volume, backup
//     id, target, manifest key, digest). Accept takes it only while S is
//     open with token T, only for a volume of S's configuration, only
//     once per volume, and only after loading the named backup manifest
//     from the target and checking its id, volume, digest and tags. Stale,
//     duplicate and foreign acknowledgements change nothing.
//  5. When every volume is acknowledged: S becomes committing (persisted),
//     the system manifest is written with conditional create to the
//     default target, read back and compared, then copied to every other
//     target, and S becomes committed. The manifest records the backup ids
//     carried by the acknowledgements, never a field read back from state
//     something else updates.
//  6. Any failure or timeout fails S; a failed S has no manifest anywhere:
//     nothing is written before step 5, and a failure in step 5 deletes
//     what was written. A coordinator killed during step 5 finds S
//     committing at its next start and settles it from the default
//     target: a manifest there that reads back whole means committed
//     (the copies are finished), else failed (copies removed).
//
// Volume backups a system backup names carry the strata.system tag, so the
// engine's Prune keeps them and Delete refuses them: a system manifest
// never names a backup retention removed. `system backup rm` deletes the
// manifests, then the volume backups no other system manifest names.
//
// System restore takes a manifest by id from any registered target (or
// from a URL the host does not know), recreates the targets it names
// (credentials supplied by the operator), then restores every volume from
// exactly the backup named, checks each digest and reports per volume. It
// records each volume restored in bbolt, so a rerun skips them and a
// killed restore resumes (the engine resumes inside a volume).
//
// Coordinator state (token counter, runs, agents, restores) lives in
// DATA-DIR/coordinator.db (bbolt); the manifests on the targets are the
// source of truth for restore.
//
// The coordinator reaches volumes only through agents' control APIs
// (blockdev/agent.Client, the local agent included) and targets only
// through backupd/targets and the plugins interface; it must not import
// snapshot, blockdev's frontends or any target implementation.
package coordinator
