package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/backupd/service"
	"github.com/strata-block/strata/blockdev"
)

func newBackupCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Back up volumes to targets; list, inspect, restore, verify and prune backups",
		Long: `Volume backups go to a backup target (see "strata target"): the first
backup of a volume is full, later ones upload only what changed since the
newest backup of the volume on that target whose snapshot still exists.
A backup is listed only once every chunk and its manifest are stored and
checked. Backups are named by id; a verb finds the id on --target, else on
every registered target.

Long verbs (create, restore, verify) show a progress bar on a terminal;
with --json they print every progress event and the result as JSON lines.`,
	}
	addClientFlags(cmd)
	cmd.AddCommand(backupCreateCmd(), backupLsCmd(), backupInfoCmd(), backupRestoreCmd(),
		backupVerifyCmd(), backupRmCmd(), backupPruneCmd(), backupGCCmd())
	return cmd
}

func backupCreateCmd() *cobra.Command {
	var (
		req    service.CreateRequest
		noWait bool
		tags   []string
	)
	cmd := &cobra.Command{
		Use:   "create VOLUME",
		Short: "Back up a volume (a new snapshot of it, or --snapshot) and print the backup id",
		Long: `Back up a volume. Without --snapshot the server takes a new snapshot named
backup-<UTC time> and backs it up; keep it: the next backup of the volume
is incremental to it (change tracking needs both snapshots). Once the backup
is committed, the snapshots earlier backups took this way are deleted,
except the one of the volume's newest backup on each target.

--no-wait returns as soon as the server accepted the job: the backup runs
on in the server, detached from this command, and "strata backup ls" shows
it once it is committed; a failure is only in the server's log.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Volume = args[0]
			var err error
			if req.Tags, err = parseTags(tags); err != nil {
				return err
			}
			if noWait {
				f := false
				req.Wait = &f
			}
			ev, err := streamCall(cmd, "/v1/backups", req, "backing up "+req.Volume)
			if !noWait {
				err = cancelledOp(cmd, err, "the backup of "+req.Volume, `"--no-wait" lets a backup run on in the server without the command`)
			}
			if err != nil {
				return err
			}
			if noWait {
				if jsonFlag(cmd) {
					return nil
				}
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "backup of %s (snapshot %s) accepted; \"strata backup ls %s\" lists it once committed\n", req.Volume, ev.Snapshot, req.Volume)
				return err
			}
			if ev.Backup == nil {
				return errors.New("the server's answer has no backup")
			}
			if jsonFlag(cmd) {
				return nil
			}
			b := ev.Backup
			if b.Reused {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s unchanged since backup %s (snapshot %s on %s): reused it\n", b.Volume, b.ID, b.Snapshot, b.Target)
				_, err = fmt.Fprintln(cmd.OutOrStdout(), b.ID)
				return err
			}
			kind := "full"
			if b.Parent != "" {
				kind = "incremental to " + b.Parent
			}
			uploaded := int64(0)
			if b.Stats != nil {
				uploaded = b.BytesUploaded
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "backed up %s@%s to %s (%s): %s uploaded\n", b.Volume, b.Snapshot, b.Target, kind, humanSize(uploaded))
			_, err = fmt.Fprintln(cmd.OutOrStdout(), b.ID)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Target, "target", "", "target name (default: the volume's target, else the default target)")
	f.StringArrayVar(&tags, "tag", nil, "record KEY=VALUE in the backup's manifest (repeatable; keys [a-z0-9._-]{1,64}; the value is all after the first '=')")
	f.StringVar(&req.Policy, "policy", "", `"always" (default) or "if-unchanged": reuse the newest backup if the volume has not been written since its snapshot`)
	f.StringVar(&req.Snapshot, "snapshot", "", "back up this existing snapshot instead of taking a new one")
	f.BoolVar(&req.Full, "full", false, "upload every chunk again instead of only the changes (heals damaged chunks)")
	f.BoolVar(&noWait, "no-wait", false, "return once the server accepted the backup; it runs on in the server")
	return cmd
}

func backupLsCmd() *cobra.Command {
	var target string
	cmd := &cobra.Command{
		Use:   "ls [VOLUME]",
		Short: "List backups, oldest first",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{}
			if len(args) == 1 {
				q.Set("volume", args[0])
			}
			if target != "" {
				q.Set("target", target)
			}
			path := "/v1/backups"
			if len(q) > 0 {
				path += "?" + q.Encode()
			}
			var bs []service.Backup
			if err := clientFor(cmd).Do(cmd.Context(), http.MethodGet, path, nil, &bs); err != nil {
				return err
			}
			return output(cmd, bs, func(w io.Writer) error {
				rows := make([][]string, 0, len(bs))
				for _, b := range bs {
					rows = append(rows, []string{b.ID, b.Volume, b.Snapshot, b.Created.Local().Format(time.DateTime), humanSize(b.Size), b.Target})
				}
				return table(w, []string{"ID", "VOLUME", "SNAPSHOT", "CREATED", "SIZE", "TARGET"}, rows)
			})
		},
	}
	cmd.Flags().StringVar(&target, "target", "", "list only this target's backups")
	return cmd
}

func targetQuery(target string) string {
	if target == "" {
		return ""
	}
	return "?target=" + url.QueryEscape(target)
}

func backupInfoCmd() *cobra.Command {
	var target string
	cmd := &cobra.Command{
		Use:   "info ID",
		Short: "Show a backup's manifest summary",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var b service.Backup
			if err := clientFor(cmd).Do(cmd.Context(), http.MethodGet, "/v1/backups/"+url.PathEscape(args[0])+targetQuery(target), nil, &b); err != nil {
				return err
			}
			return output(cmd, b, func(w io.Writer) error {
				parent := "none (full)"
				if b.Parent != "" {
					parent = b.Parent
				}
				fmt.Fprintf(w, "backup    %s\n", b.ID)
				fmt.Fprintf(w, "volume    %s\n", b.Volume)
				fmt.Fprintf(w, "snapshot  %s\n", b.Snapshot)
				fmt.Fprintf(w, "parent    %s\n", parent)
				fmt.Fprintf(w, "created   %s\n", b.Created.Local().Format(time.RFC3339))
				fmt.Fprintf(w, "size      %s (%d bytes)\n", humanSize(b.Size), b.Size)
				fmt.Fprintf(w, "digest    %s\n", b.Digest)
				fmt.Fprintf(w, "target    %s (%s)\n", b.Target, b.ManifestKey)
				fmt.Fprintf(w, "encrypted %v\n", b.Encrypted)
				for _, k := range slices.Sorted(maps.Keys(b.Tags)) {
					fmt.Fprintf(w, "tag       %s=%s\n", k, b.Tags[k])
				}
				switch {
				case b.Stats == nil:
				case b.BytesScanned == 0 && b.Parent != "":
					// Only the maps and the manifest: nothing changed.
					fmt.Fprintf(w, "uploaded  %s (no block changed since backup %s)\n", humanSize(b.BytesUploaded), b.Parent)
				default:
					fmt.Fprintf(w, "uploaded  %s of %s scanned; chunks new %d, dedup %d, zero %d\n",
						humanSize(b.BytesUploaded), humanSize(b.BytesScanned), b.ChunksNew, b.ChunksDedup, b.ChunksZero)
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&target, "target", "", "look for the backup only on this target")
	return cmd
}

func backupRestoreCmd() *cobra.Command {
	var req service.RestoreRequest
	cmd := &cobra.Command{
		Use:   "restore ID --to VOLUME [--overwrite]",
		Short: "Restore a backup into a new volume, or (--overwrite) an existing detached one of the same size",
		Long: `Restore backup ID into volume --to: a new volume of the backup's size, or,
with --overwrite, an existing one, which must be detached, not in use and
of that size, and whose data the backup's replaces. Every chunk and the
whole-volume digest are checked. A restore killed with the server, or
stopped by its shutdown, is resumed by running it again: what it restored
is read back and checked rather than fetched again. So is one that failed
into a volume it created once progress was recorded (the error says the
volume is kept, out of use, and until when).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if req.To == "" {
				return argsError(cmd, errors.New("--to VOLUME is required"))
			}
			// Whether the restore overwrites a volume: what an
			// interruption leaves behind differs.
			_, verr := clientFor(cmd).Volume(cmd.Context(), req.To)
			existed := verr == nil
			ev, err := streamCall(cmd, "/v1/backups/"+url.PathEscape(args[0])+"/restore", req, "restoring "+args[0])
			after := "the server removes the volume " + req.To + " the restore was creating, or, once the restore has recorded progress, keeps it out of use for a day: run the restore again to resume it, or delete the volume"
			if existed {
				after = fmt.Sprintf("volume %s, which existed, may be left partly overwritten (or, if an interrupted run of this restore had created it, removed): run the restore again", req.To)
			}
			if err = cancelledOp(cmd, err, fmt.Sprintf("the restore of backup %s into %s", args[0], req.To), after); err != nil {
				return err
			}
			if ev.Restore == nil {
				return errors.New("the server's answer has no restore result")
			}
			if jsonFlag(cmd) {
				return nil
			}
			r := ev.Restore
			how := "existing volume"
			if r.Created {
				how = "new volume"
			}
			resumed := ""
			if r.ResumedBytes > 0 {
				resumed = fmt.Sprintf("; resumed: %s restored before was checked, not fetched", humanSize(r.ResumedBytes))
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "restored backup %s of %s from %s into %s %s (digest %s%s)\n", r.ID, r.Volume, r.Target, how, r.To, r.Digest, resumed)
			return err
		},
	}
	cmd.Flags().StringVar(&req.To, "to", "", "volume to restore into (created if it does not exist)")
	cmd.Flags().BoolVar(&req.Overwrite, "overwrite", false, "restore into --to even if it exists, replacing its data")
	cmd.Flags().StringVar(&req.Target, "target", "", "look for the backup only on this target")
	return cmd
}

func backupVerifyCmd() *cobra.Command {
	var req service.VerifyRequest
	cmd := &cobra.Command{
		Use:   "verify ID",
		Short: "Check a backup's manifest, map pages and chunks (--read-data: re-read and re-hash every chunk)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ev, err := streamCall(cmd, "/v1/backups/"+url.PathEscape(args[0])+"/verify", req, "verifying "+args[0])
			if err = cancelledOp(cmd, err, "the verify of backup "+args[0], ""); err != nil {
				return err
			}
			v := ev.Verify
			if v == nil || v.Report == nil {
				return errors.New("the server's answer has no verify report")
			}
			if !v.OK {
				return errors.New(verifyFailure(v))
			}
			if jsonFlag(cmd) {
				return nil
			}
			how := "manifest, map pages and chunk index"
			if req.ReadData {
				how = "every chunk re-read and re-hashed"
			}
			if n := len(v.Report.BadIndexes); n > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %d pack indexes on target %s do not decode (this backup needs none of them; GC keeps their packs): %s\n", n, v.Target, oneLine(v.Report.BadIndexes[0]))
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "backup %s of %s on %s OK: %d chunks, %s\n", v.ID, v.Volume, v.Target, v.Report.Chunks, how)
			return err
		},
	}
	cmd.Flags().StringVar(&req.Target, "target", "", "look for the backup only on this target")
	cmd.Flags().BoolVar(&req.ReadData, "read-data", false, "fetch and re-hash every chunk the backup references")
	return cmd
}

// verifyFailure is the one line naming what verify found bad.
func verifyFailure(v *service.VerifyResult) string {
	rep := v.Report
	var parts []string
	if n := len(rep.BadChunks); n > 0 {
		c := rep.BadChunks[0]
		what := "damaged"
		if c.Missing {
			what = "missing"
		}
		vols := map[string]bool{}
		var names []string
		for _, b := range c.Backups {
			if !vols[b.Volume] {
				vols[b.Volume] = true
				names = append(names, b.Volume)
			}
		}
		if len(names) == 0 {
			names = []string{v.Volume}
		}
		s := fmt.Sprintf("chunk %s %s (volume %s", c.ID, what, strings.Join(names, ", "))
		if c.Pack != "" {
			s += ", pack " + c.Pack
		}
		s += ")"
		if n > 1 {
			s += fmt.Sprintf(" and %d more bad chunks", n-1)
		}
		parts = append(parts, s)
	}
	if n := len(rep.BadBackups); n > 0 {
		parts = append(parts, fmt.Sprintf("%d backups are bad (%s)", n, oneLine(rep.BadBackups[0].Err)))
	}
	if len(parts) == 0 {
		parts = append(parts, oneLine(v.Error))
	}
	if len(rep.BadChunks) == 0 && len(rep.BadBackups) > 0 && strings.Contains(rep.BadBackups[0].Err, backupd.ErrKey.Error()) {
		// Not damage: the server's key does not open it.
		return fmt.Sprintf("backup %s of volume %s on target %s cannot be read with the server's key: %s; start the server with the key it was made with (--backup-key), or, for a backup taken before a key was set or written before manifests carried a MAC, with --backup-allow-unencrypted", v.ID, v.Volume, v.Target, strings.Join(parts, "; "))
	}
	return fmt.Sprintf("backup %s of volume %s on target %s is damaged: %s; a \"backup create --full\" of the volume stores fresh copies", v.ID, v.Volume, v.Target, strings.Join(parts, "; "))
}

func backupRmCmd() *cobra.Command {
	var target string
	cmd := &cobra.Command{
		Use:   "rm ID",
		Short: "Delete a backup (its manifest; unreferenced data is reclaimed by garbage collection)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := clientFor(cmd).Do(cmd.Context(), http.MethodDelete, "/v1/backups/"+url.PathEscape(args[0])+targetQuery(target), nil, nil); err != nil {
				return err
			}
			return done(cmd, "deleted backup "+args[0], map[string]any{"id": args[0]})
		},
	}
	cmd.Flags().StringVar(&target, "target", "", "look for the backup only on this target")
	return cmd
}

func backupPruneCmd() *cobra.Command {
	var req service.PruneRequest
	cmd := &cobra.Command{
		Use:   "prune [VOLUME]",
		Short: "Delete the backups a retention policy does not keep (per volume)",
		Long: `Keep, per volume, the --keep-last newest backups and every backup created
at most --keep-within before the volume's newest backup, or before now if
that is earlier (a volume whose backups stopped keeps its last ones however
much time passes); delete the rest (their manifests: "backup gc" reclaims
the space). Backups a system backup holds, and backups dated more than 10
minutes in the future (a clock ahead, a damaged date), are always kept and
count towards neither rule: the newest backup that sets the window is the
newest of the others. Manifests that do not load are neither kept nor
deleted. A policy that keeps nothing is refused.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				req.Volume = args[0]
			}
			if _, err := service.ParseKeepWithin(req.KeepWithin); err != nil {
				return fmt.Errorf("--keep-within %q: want a duration such as 36h or a number of days such as 7d: %w", req.KeepWithin, blockdev.ErrInvalidArgument)
			}
			var res []service.PruneResult
			if err := clientFor(cmd).Do(cmd.Context(), http.MethodPost, "/v1/backups/prune", req, &res); err != nil {
				return err
			}
			return output(cmd, res, func(w io.Writer) error {
				verb := "deleted"
				if req.DryRun {
					verb = "would delete"
				}
				for _, r := range res {
					fmt.Fprintf(w, "target %s: kept %d, %s %d\n", r.Target, len(r.Kept), verb, len(r.Deleted))
					for _, b := range r.Deleted {
						fmt.Fprintf(w, "  %s %s %s@%s\n", verb, b.ID, b.Volume, b.Snapshot)
					}
					for _, b := range r.Held {
						fmt.Fprintf(w, "  kept %s %s@%s: held by a system backup\n", b.ID, b.Volume, b.Snapshot)
					}
					for _, b := range r.Future {
						fmt.Fprintf(w, "  kept %s %s@%s: dated in the future (%s), counted by no rule\n", b.ID, b.Volume, b.Snapshot, b.Created.Format(time.RFC3339))
					}
					for _, m := range r.Skipped {
						fmt.Fprintf(w, "  skipped %s: it does not load (%s); neither kept nor deleted\n", m.Key, oneLine(m.Err))
					}
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.IntVar(&req.KeepLast, "keep-last", 0, "keep the N newest backups of each volume")
	f.StringVar(&req.KeepWithin, "keep-within", "", "keep backups created at most this long before the volume's newest backup, or now if earlier (36h, 7d)")
	f.StringVar(&req.Target, "target", "", "prune only this target (default: every target)")
	f.BoolVar(&req.DryRun, "dry-run", false, "print what would be deleted, delete nothing")
	return cmd
}

func backupGCCmd() *cobra.Command {
	var req service.GCRequest
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Reclaim the space of deleted backups (two-phase: safe while backups run)",
		Long: `Garbage-collect the packs and map pages no backup references. A run marks
what is unreferenced and deletes only what an earlier run marked at least
--grace ago and is still unreferenced, so a backup running meanwhile never
loses a chunk it uses (backupd/FORMAT.md, "Garbage collection"). Run it
periodically, e.g. after prune; space comes back on the second run.
The server's default --grace is the longer of twice its
--backup-max-duration and --backup-max-duration plus twice its
--backup-gc-margin: 12h with the defaults (6h and 15m). A grace not longer
than --backup-max-duration plus --backup-gc-margin, or than the deadline
any backup recorded on the target plus that margin, is refused.
One GC runs per target at a time: another one fails as in use. A GC that
was killed leaves its lease, which the next GC takes as abandoned after
15 minutes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkGrace(req.Grace); err != nil {
				return err
			}
			var res []service.GCResult
			if err := clientFor(cmd).Do(cmd.Context(), http.MethodPost, "/v1/backups/gc", req, &res); err != nil {
				return err
			}
			return output(cmd, res, func(w io.Writer) error {
				for _, r := range res {
					g := r.Report
					fmt.Fprintf(w, "target %s: %d manifests, %d packs live; marked %d packs and %d pages; deleted %d packs and %d pages (%s)\n",
						r.Target, g.Manifests, g.PacksLive, g.PacksMarked, g.PagesMarked, g.PacksDeleted, g.PagesDeleted, humanSize(g.BytesDeleted))
					if g.IndexesDeleted > 0 {
						fmt.Fprintf(w, "target %s: deleted %d pack indexes whose pack was gone (written by backups that overran their deadline)\n", r.Target, g.IndexesDeleted)
					}
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Target, "target", "", "collect only this target (default: every target)")
	f.StringVar(&req.Grace, "grace", "", "delete only what was marked at least this long ago (36h, 2d; default: the longer of 2 × the server's --backup-max-duration and --backup-max-duration + 2 × --backup-gc-margin, 12h with their defaults; must be longer than --backup-max-duration + --backup-gc-margin)")
	f.BoolVar(&req.DryRun, "dry-run", false, "report what a run would do; mark and delete nothing")
	return cmd
}

// checkGrace checks backup gc's --grace (a Go duration or days, as
// keep-within) before the request, with an error naming the flag.
func checkGrace(grace string) error {
	if grace == "" {
		return nil
	}
	if _, err := service.ParseKeepWithin(grace); err != nil {
		return fmt.Errorf("--grace %q: want a duration such as 13h or a number of days such as 2d: %w", grace, blockdev.ErrInvalidArgument)
	}
	return nil
}

// streamCall POSTs in to path and reads the NDJSON answer: progress
// events drive a bar on a terminal (or are printed with --json), and the
// final done or accepted event is returned; an error event is an error.
func streamCall(cmd *cobra.Command, path string, in any, what string) (*service.Event, error) {
	asJSON := jsonFlag(cmd)
	out := cmd.OutOrStdout()
	var bar *progressbar.ProgressBar
	defer func() {
		if bar != nil {
			_ = bar.Clear() // the result line replaces the bar
		}
	}()
	stderr := cmd.ErrOrStderr()
	tty := false
	if f, ok := stderr.(*os.File); ok && !asJSON {
		tty = isatty.IsTerminal(f.Fd())
	}
	lines := &progressLines{w: stderr, what: what, every: progressLineEvery}
	return service.StreamEvents(cmd.Context(), clientFor(cmd), path, in, func(ev *service.Event, line []byte) error {
		if asJSON { // the error event too, as the system verbs print it: a program gets the code
			if _, err := fmt.Fprintf(out, "%s\n", line); err != nil {
				return err
			}
		}
		if ev.Event != "progress" || ev.Progress == nil {
			return nil
		}
		if !tty {
			if !asJSON {
				lines.show(ev.Progress)
			}
			return nil
		}
		if bar == nil && ev.BytesTotal > 0 {
			bar = newByteBar(stderr, ev.BytesTotal, what)
		}
		if bar != nil {
			_ = bar.Set64(barPosition(ev.Progress))
		}
		return nil
	})
}

// progressLineEvery spaces the progress lines of a wait whose stderr is
// not a terminal.
const progressLineEvery = 30 * time.Second

// progressLines prints a line of progress at most every every, the first
// one every after the first event, where no bar can be drawn (stderr is
// not a terminal: a cron job's log), so that an operation of hours is not
// silent until its end, and one of seconds prints nothing more.
type progressLines struct {
	w     io.Writer
	what  string
	every time.Duration
	next  time.Time
}

func (l *progressLines) show(p *backupd.Progress) {
	now := time.Now()
	if l.next.IsZero() || now.Before(l.next) {
		if l.next.IsZero() {
			l.next = now.Add(l.every)
		}
		return
	}
	l.next = now.Add(l.every)
	pos, pct := barPosition(p), 0.0
	if p.BytesTotal > 0 {
		pct = 100 * float64(pos) / float64(p.BytesTotal)
	}
	fmt.Fprintf(l.w, "%s: %s %.0f%% (%s of %s)\n", l.what, p.Phase, pct, humanSize(pos), humanSize(p.BytesTotal))
}

// parseTags turns --tag KEY=VALUE flags into a map: the value is all after
// the first '=', commas included; a key given twice is refused.
func parseTags(flags []string) (map[string]string, error) {
	if len(flags) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(flags))
	for _, f := range flags {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("--tag %q: want KEY=VALUE", f)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("--tag %q given twice", k)
		}
		out[k] = v
	}
	return out, nil
}
