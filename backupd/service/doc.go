// Package service serves the volume backup engine (backupd) on the
// agent's control API, as an agent Extension the server binary wires in:
//
//	POST   /v1/backups               back up a volume (NDJSON progress, then done or error)
//	GET    /v1/backups               list backups (?volume=, ?target=)
//	GET    /v1/backups/{id}          one backup's manifest summary
//	POST   /v1/backups/{id}/restore  restore into a new or detached volume (NDJSON)
//	POST   /v1/backups/{id}/verify   verify a backup, optionally reading its data (NDJSON)
//	DELETE /v1/backups/{id}          delete a backup's manifest
//	POST   /v1/backups/prune         apply a retention policy
//
// Targets come from the target registry (backupd/targets); a backup is
// found by id on the named target or on every registered one. Each target
// gets a pack index cache in DATA-DIR/backup-cache/<target>.
//
// Long operations answer newline-delimited JSON (application/x-ndjson):
// progress events from the engine, at most about five a second, then one
// "done" event carrying the result or one "error" event carrying the
// message and the API error code. A backup requested with "wait": false
// answers one "accepted" event and runs on, detached from the request,
// until it commits or fails (failures are logged); the agent's shutdown
// cancels it.
package service
