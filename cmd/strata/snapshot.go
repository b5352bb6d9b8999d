package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/strata-block/strata/blockdev"
)

func newSnapshotCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Create, list, remove and revert to snapshots",
	}
	addClientFlags(cmd)
	cmd.AddCommand(
		&cobra.Command{
			Use:   "create VOL [SNAP]",
			Short: "Take a snapshot (named by the UTC time if SNAP is omitted)",
			Args:  cobra.RangeArgs(1, 2),
			RunE: func(cmd *cobra.Command, args []string) error {
				name := ""
				if len(args) == 2 {
					name = args[1]
				}
				si, err := clientFor(cmd).CreateSnapshot(cmd.Context(), args[0], name)
				if err != nil {
					return err
				}
				return output(cmd, si, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "created snapshot %s@%s\n", args[0], si.Name)
					return err
				})
			},
		},
		&cobra.Command{
			Use:   "ls VOL",
			Short: "List a volume's snapshots, oldest first",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				ss, err := clientFor(cmd).Snapshots(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				if ss == nil {
					ss = []blockdev.SnapshotInfo{}
				}
				return output(cmd, ss, func(w io.Writer) error {
					rows := make([][]string, 0, len(ss))
					for _, s := range ss {
						rows = append(rows, []string{s.Name, s.Created.Format("2006-01-02 15:04:05Z07:00"), humanSize(s.Size), humanSize(s.Owned)})
					}
					return table(w, []string{"NAME", "CREATED", "SIZE", "OWNS"}, rows)
				})
			},
		},
		&cobra.Command{
			Use:   "rm VOL SNAP",
			Short: "Remove a snapshot (merged online into its neighbour)",
			Args:  cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				if err := clientFor(cmd).DeleteSnapshot(cmd.Context(), args[0], args[1]); err != nil {
					return err
				}
				return done(cmd, fmt.Sprintf("removed snapshot %s@%s", args[0], args[1]), map[string]any{"volume": args[0], "snapshot": args[1]})
			},
		},
		&cobra.Command{
			Use:   "revert VOL SNAP",
			Short: "Revert a volume to a snapshot; newer snapshots are dropped",
			Args:  cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				if _, err := clientFor(cmd).RevertSnapshot(cmd.Context(), args[0], args[1]); err != nil {
					return err
				}
				return done(cmd, fmt.Sprintf("reverted %s to snapshot %s", args[0], args[1]), map[string]any{"volume": args[0], "snapshot": args[1]})
			},
		},
	)
	return cmd
}
