package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
)

// backupSteps maps benchbackup's step names to the report's figures.
var backupSteps = map[string]string{
	"full":                            "full",
	"incremental-10MiB-contiguous":    "inc-10MiB",
	"incremental-1pct-scattered-4KiB": "inc-1pct-4KiB",
	"restore":                         "restore",
	"restore-durable":                 "restore-durable",
}

// backupCmd prints one benchbackup round (its JSON output) as samples.tsv
// lines: seconds per tool and step (and, for the full backup and the
// restores, a plain write and fsync of the image measured in the round),
// MiB stored by each backup step and the MiB it changed.
func backupCmd(w io.Writer, args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: report backup FILE ROUND")
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	var out struct {
		Steps []struct {
			Name          string  `json:"step"`
			StrataSeconds float64 `json:"strata_s"`
			ResticSeconds float64 `json:"restic_s"`
			StrataBytes   int64   `json:"strata_bytes"`
			ResticBytes   int64   `json:"restic_bytes"`
			ChangedBytes  int64   `json:"changed_bytes"`
			DiskSeconds   float64 `json:"disk_s"`
		} `json:"steps"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	if len(out.Steps) == 0 {
		return fmt.Errorf("%s: no steps", args[0])
	}
	r := args[1]
	for _, st := range out.Steps {
		fig, ok := backupSteps[st.Name]
		if !ok {
			return fmt.Errorf("%s: unknown step %q", args[0], st.Name)
		}
		fmt.Fprintf(w, "backup\t%s\tstrata\t%s\ts\t%.3f\n", fig, r, st.StrataSeconds)
		fmt.Fprintf(w, "backup\t%s\trestic\t%s\ts\t%.3f\n", fig, r, st.ResticSeconds)
		if st.DiskSeconds > 0 {
			fmt.Fprintf(w, "backup\t%s\tdisk\t%s\ts\t%.3f\n", fig, r, st.DiskSeconds)
		}
		if fig == "restore" || fig == "restore-durable" {
			continue
		}
		const mib = 1 << 20
		fmt.Fprintf(w, "backup\t%s\tstrata\t%s\tstored_MiB\t%.3f\n", fig, r, float64(st.StrataBytes)/mib)
		fmt.Fprintf(w, "backup\t%s\trestic\t%s\tstored_MiB\t%.3f\n", fig, r, float64(st.ResticBytes)/mib)
		fmt.Fprintf(w, "backup\t%s\tchanged\t%s\tstored_MiB\t%.3f\n", fig, r, float64(st.ChangedBytes)/mib)
	}
	return nil
}
