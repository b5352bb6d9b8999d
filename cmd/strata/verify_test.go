package main

import (
	"strings"
	"testing"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/backupd/service"
)

// TestVerifyFailure: the line a failed verify prints names what is wrong
// and the fix that fits it: for a backup the server's key cannot open,
// the key (a fresh full backup, the hint for damage, would not help).
func TestVerifyFailure(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		rep         backupd.VerifyReport
		want, avoid string
	}{
		{"damaged chunk", backupd.VerifyReport{BadChunks: []backupd.BadChunk{{ID: "ab12", Err: "xxhash differs"}}}, "--full", "--backup-key"},
		{"key", backupd.VerifyReport{BadBackups: []backupd.BadBackup{{Key: "backups/v/1", Err: "volume \"v\" backup 1 is encrypted (key k) and no key was given: " + backupd.ErrKey.Error()}}}, "--backup-key", "damaged"},
		{"bad manifest", backupd.VerifyReport{BadBackups: []backupd.BadBackup{{Key: "backups/v/1", Err: "manifest: unexpected EOF: corrupt"}}}, "--full", "--backup-key"},
	} {
		got := verifyFailure(&service.VerifyResult{ID: "1", Volume: "v", Target: "t", Report: &tc.rep})
		if !strings.Contains(got, tc.want) || strings.Contains(got, tc.avoid) {
			t.Errorf("%s: %q; want it to mention %q and not %q", tc.name, got, tc.want, tc.avoid)
		}
	}
}
