package backupd

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// prefixLimits records the MaxDuration of every backup configuration that
// wrote to the repository: one object per distinct value, its key holding
// the value in whole seconds (limits/backup-max-duration/<seconds>), so
// writers of different values never overwrite each other. GC refuses a
// Grace not longer than the largest (FORMAT.md, "Garbage collection").
const prefixLimits = "limits/backup-max-duration/"

func limitKey(d time.Duration) string {
	secs := int64((d + time.Second - 1) / time.Second)
	return prefixLimits + strconv.FormatInt(secs, 10)
}

// recordMaxDuration makes sure the repository records d. A backup calls
// it before it starts its clock, every time (an operator may have deleted
// the record to lower the limit while this process still uses it); it
// Puts the record only if Has does not find it, which on the fs target
// saves an fsynced create per backup. It returns the bytes Put.
func (r *Repository) recordMaxDuration(ctx context.Context, d time.Duration) (int64, error) {
	key := limitKey(d)
	has, err := r.t.Has(ctx, []string{key})
	if err != nil {
		return 0, fmt.Errorf("checking the backup deadline record %s: %w", key, err)
	}
	if has[0] {
		return 0, nil
	}
	host, _ := os.Hostname()
	body := marshalJSON(struct {
		MaxDuration string    `json:"max_duration"`
		Host        string    `json:"host"`
		Recorded    time.Time `json:"recorded"`
	}{d.String(), host, time.Now().UTC()})
	if err := r.putBytes(ctx, key, body); err != nil {
		return 0, fmt.Errorf("recording the backup deadline %v (GC's grace must exceed it): %w", d, err)
	}
	return int64(len(body)), nil
}

// recordedMaxDuration returns the largest MaxDuration recorded, and its key.
func (r *Repository) recordedMaxDuration(ctx context.Context) (time.Duration, string, error) {
	var most time.Duration
	var from string
	for o, err := range r.t.List(ctx, prefixLimits, "") {
		if err != nil {
			return 0, "", fmt.Errorf("list %s: %w", prefixLimits, err)
		}
		secs, err := strconv.ParseInt(strings.TrimPrefix(o.Key, prefixLimits), 10, 64)
		if err != nil || secs <= 0 {
			r.log.Warn("ignoring foreign object", "key", o.Key)
			continue
		}
		if d := time.Duration(secs) * time.Second; d > most {
			most, from = d, o.Key
		}
	}
	return most, from, nil
}
