package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/backupd/coordinator"
	"github.com/strata-block/strata/blockdev/agent"
)

func newSystemCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "system",
		Short: "System backups: every volume of every agent plus the configuration, fenced",
		Long: `A system backup backs up every volume of every agent (this host's and those
added with "strata agent add") to the volume's own target, and writes one
system manifest naming exactly the backups the agents acknowledged. The
coordinator checks each acknowledgement on the target itself and writes the
manifest (to the default target, then copies to every other target) only
when every volume is acknowledged: a system backup either commits with all
its data or fails and leaves no manifest anywhere.`,
	}
	addClientFlags(cmd)
	backup := &cobra.Command{Use: "backup", Short: "Create, list, inspect and remove system backups"}
	backup.AddCommand(systemBackupCreateCmd(), systemBackupLsCmd(), systemBackupInfoCmd(), systemBackupRmCmd())
	cmd.AddCommand(backup, systemRestoreCmd())
	return cmd
}

func systemBackupCreateCmd() *cobra.Command {
	var (
		req     coordinator.BackupRequest
		noWait  bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Run a system backup and print its id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if noWait {
				f := false
				req.Wait = &f
			}
			req.Timeout = coordinator.Duration(timeout)
			ev, err := systemStream(cmd, "/v1/system/backups", req, "system backup", !noWait)
			if !noWait {
				err = cancelledOp(cmd, err, "the system backup",
					`it fails and commits no manifest unless it was already committing ("strata system backup ls" shows its state); "--no-wait" lets a system backup run on in the server`)
			}
			if err != nil {
				return err
			}
			if jsonFlag(cmd) {
				return nil
			}
			s := ev.System
			if s == nil {
				return errors.New("the server's answer has no system backup")
			}
			if noWait {
				fmt.Fprintf(cmd.ErrOrStderr(), "system backup %s accepted; \"strata system backup info %s\" shows its state\n", s.ID, s.ID)
			} else {
				var on []string // the targets holding the manifest now
				for _, t := range s.Targets {
					if !slices.Contains(s.CopiesPending, t) {
						on = append(on, t)
					}
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "system backup %s committed: %s, manifest on %s\n", s.ID, plural(len(s.Volumes), "volume"), strings.Join(on, ", "))
				if len(s.CopiesPending) > 0 {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: the manifest's copies on %s failed and are retried; until they land, a wiped host cannot restore from those targets\n", strings.Join(s.CopiesPending, ", "))
				}
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), s.ID)
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVar(&noWait, "no-wait", false, "return once the coordinator opened the system backup; it runs on in the server")
	f.BoolVar(&req.ConsistencyGroup, "consistency-group", false, "snapshot every volume at one instant (writes held briefly on every agent)")
	f.StringVar(&req.Policy, "policy", coordinator.PolicyAlways, "always: a new backup of every volume; if-unchanged: reuse a volume's last system-held backup when change tracking shows no write since")
	f.DurationVar(&timeout, "timeout", 0, "fail the system backup if it takes longer (default 6h)")
	return cmd
}

func systemBackupLsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List system backups (this coordinator's, and manifests found on its targets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ss []*coordinator.Summary
			if err := coordinatorDo(cmd, http.MethodGet, "/v1/system/backups", nil, &ss); err != nil {
				return err
			}
			return output(cmd, ss, func(w io.Writer) error {
				rows := make([][]string, 0, len(ss))
				for _, s := range ss {
					note := s.Error
					if !s.Known {
						note = "found on " + strings.Join(s.Targets, ", ")
					}
					if len(s.CopiesPending) > 0 {
						note = "copies pending: " + strings.Join(s.CopiesPending, ", ")
					}
					rows = append(rows, []string{s.ID, s.State, s.Started.Local().Format(time.DateTime), fmt.Sprint(len(s.Volumes)), note})
				}
				return table(w, []string{"ID", "STATE", "STARTED", "VOLUMES", "NOTE"}, rows)
			})
		},
	}
}

func systemBackupInfoCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "info ID",
		Short: "Show a system backup: state, configuration and the backup of every volume",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var s coordinator.Summary
			if err := coordinatorDo(cmd, http.MethodGet, "/v1/system/backups/"+url.PathEscape(args[0]), nil, &s); err != nil {
				return err
			}
			return output(cmd, &s, func(w io.Writer) error {
				fmt.Fprintf(w, "id:       %s\nstate:    %s\ntoken:    %d\nstarted:  %s\n", s.ID, s.State, s.Token, s.Started.Local().Format(time.RFC3339))
				if !s.Finished.IsZero() {
					fmt.Fprintf(w, "finished: %s\n", s.Finished.Local().Format(time.RFC3339))
				}
				if s.Error != "" {
					fmt.Fprintf(w, "error:    %s\n", s.Error)
				}
				if s.Config != nil {
					fmt.Fprintln(w, "targets:")
					for _, t := range s.Config.Targets {
						def := ""
						if t.Default {
							def = " (default)"
						}
						fmt.Fprintf(w, "  %s %s%s\n", t.Name, t.URL, def)
					}
				}
				rows := make([][]string, 0, len(s.Volumes))
				for _, v := range s.Volumes {
					rows = append(rows, []string{v.Agent, v.Volume, humanSize(v.Size), v.Target, v.BackupID, v.Digest[:16]})
				}
				return table(w, []string{"AGENT", "VOLUME", "SIZE", "TARGET", "BACKUP", "DIGEST"}, rows)
			})
		},
	}
}

func systemBackupRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm ID",
		Short: "Remove a system backup: its manifests, then the volume backups no other system backup names",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := coordinatorDo(cmd, http.MethodDelete, "/v1/system/backups/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			return done(cmd, "system backup "+args[0]+" removed", map[string]any{"id": args[0]})
		},
	}
}

func systemRestoreCmd() *cobra.Command {
	var (
		req   coordinator.RestoreRequest
		creds []string
	)
	cmd := &cobra.Command{
		Use:   "restore ID",
		Short: "Restore every volume of a system backup, and the targets it used",
		Long: `Restore system backup ID: the targets it names are registered again where
missing (give credentials with --credentials NAME=FILE), then every volume is
restored from exactly the backup the manifest names and its digest checked.
On a host that knows none of the targets (a wiped data directory), read the
manifest with --from URL [--credentials FILE]. A restore killed midway
resumes where it stopped when run again; a finished one run again restores
again. An attached volume is refused unless --force.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.ID = args[0]
			req.Credentials = map[string]string{}
			for _, c := range creds {
				name, file, ok := strings.Cut(c, "=")
				if !ok && req.FromURL != "" && req.FromCredentials == "" {
					req.FromCredentials = c // --from URL --credentials FILE
					continue
				}
				if !ok || name == "" || file == "" {
					return fmt.Errorf("--credentials %q: want NAME=FILE (or FILE, once, for --from)", c)
				}
				abs, err := absPath(file)
				if err != nil {
					return err
				}
				req.Credentials[name] = abs
			}
			if req.FromCredentials != "" {
				abs, err := absPath(req.FromCredentials)
				if err != nil {
					return err
				}
				req.FromCredentials = abs
			}
			if req.FromCredentials != "" && req.FromURL == "" {
				return errors.New("a credentials file without NAME= is for --from URL")
			}
			ev, err := systemStream(cmd, "/v1/system/restore", req, "system restore", true)
			err = cancelledOp(cmd, err, "the system restore",
				"volumes it was restoring may be left partly written: run it again, it resumes where it stopped")
			if ev != nil && ev.Restore != nil && !jsonFlag(cmd) {
				printRestoreReport(cmd.OutOrStdout(), ev.Restore)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.FromURL, "from", "", "read the system manifest from this target URL (a host that knows none of its targets)")
	f.StringArrayVar(&creds, "credentials", nil, "NAME=FILE: credentials file for target NAME when the restore registers it (repeatable); a bare FILE is --from's")
	f.BoolVar(&req.Force, "force", false, "unmount and detach attached volumes to restore them")
	f.StringSliceVar(&req.Volumes, "volume", nil, "restore only these volumes (repeatable)")
	return cmd
}

func printRestoreReport(w io.Writer, r *coordinator.RestoreReport) {
	rows := make([][]string, 0, len(r.Volumes))
	for _, v := range r.Volumes {
		note := v.Error
		if note == "" && v.Bytes > 0 {
			note = humanSize(v.Bytes) + " written"
		}
		rows = append(rows, []string{v.Agent, v.Volume, v.Target, v.BackupID, v.Status, note})
	}
	_ = table(w, []string{"AGENT", "VOLUME", "TARGET", "BACKUP", "STATUS", "NOTE"}, rows)
	for _, f := range r.TargetsFailed {
		fmt.Fprintf(w, "target not recreated (no restored volume needs it): %s\n", f)
	}
	if len(r.TargetsAdded) > 0 {
		fmt.Fprintf(w, "targets recreated: %s\n", strings.Join(r.TargetsAdded, ", "))
	}
}

// systemStream posts in to path and follows the coordinator's NDJSON
// answer: a progress bar over every volume's bytes on a terminal, each
// line as is with --json, and a line per finished volume otherwise. It
// returns the final done (or accepted) event; an error event is returned
// with its error so a partial restore report can still be printed.
func systemStream(cmd *cobra.Command, path string, in any, what string, wait bool) (*coordinator.Event, error) {
	asJSON := jsonFlag(cmd)
	out, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
	tty := false
	if f, ok := stderr.(*os.File); ok && !asJSON {
		tty = isatty.IsTerminal(f.Fd())
	}
	var (
		bar    *progressbar.ProgressBar
		totals = map[string]int64{}
		dones  = map[string]int64{}
		final  *coordinator.Event
		// Without a terminal: a line every progressLineEvery (besides
		// the one per finished volume).
		lines = &progressLines{w: stderr, what: what, every: progressLineEvery}
	)
	defer func() {
		if bar != nil {
			_ = bar.Clear()
		}
	}()
	c := clientFor(cmd)
	err := c.Stream(cmd.Context(), http.MethodPost, path, in, func(line []byte) error {
		var ev coordinator.Event
		if err := json.Unmarshal(line, &ev); err != nil {
			return fmt.Errorf("decode server event %q: %w", line, err)
		}
		if asJSON {
			if _, err := fmt.Fprintf(out, "%s\n", line); err != nil {
				return err
			}
		}
		switch ev.Event {
		case "progress":
			if ev.Progress == nil || asJSON {
				return nil
			}
			k := ev.Agent + "/" + ev.Volume
			totals[k], dones[k] = ev.BytesTotal, barPosition(ev.Progress)
			var total, done int64
			for k := range totals {
				total, done = total+totals[k], done+dones[k]
			}
			if !tty {
				lines.show(&backupd.Progress{Phase: ev.Phase, BytesTotal: total, Position: done})
				return nil
			}
			if bar == nil {
				bar = newByteBar(stderr, total, what)
			}
			bar.ChangeMax64(total)
			_ = bar.Set64(done)
		case "volume":
			if r := ev.Result; r != nil && !asJSON {
				if bar != nil {
					_ = bar.Clear()
				}
				msg := fmt.Sprintf("%s/%s: %s", r.Agent, r.Volume, r.Status)
				if r.BackupID != "" {
					msg += " (backup " + r.BackupID + " on " + r.Target + ")"
				}
				if r.Error != "" {
					msg += ": " + r.Error
				}
				fmt.Fprintln(stderr, msg)
			}
		case "error":
			final = &ev
			return &agent.APIError{Status: http.StatusInternalServerError, Code: ev.Code, Message: ev.Error}
		case "done":
			final = &ev
		case "accepted":
			if final == nil {
				final = &ev
			}
		}
		return nil
	})
	if err != nil {
		return final, noCoordinator(c, err)
	}
	if final == nil || (final.Event != "done" && (wait || final.Event != "accepted")) {
		return nil, errors.New("the server's answer ended before the operation finished (see the server log)")
	}
	return final, nil
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func absPath(p string) (string, error) {
	a, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("path %q: %w", p, err)
	}
	return a, nil
}

// barPosition is how far the operation of a progress event has come,
// against its BytesTotal: its position through the volume (backup,
// restore: holes and unchanged ranges count), else the bytes it read or
// wrote (verify).
func barPosition(p *backupd.Progress) int64 {
	done := p.Position
	if done == 0 {
		done = max(p.BytesScanned, p.BytesWritten)
	}
	return min(done, p.BytesTotal)
}

// newByteBar is the progress bar long operations draw on a terminal.
func newByteBar(w io.Writer, total int64, what string) *progressbar.ProgressBar {
	return progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowBytes(true),
		progressbar.OptionUseIECUnits(true), // KiB, MiB/s: as every other line
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
}
