package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
)

func newStatusCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the server's version, sockets, FUSE mount and volume count",
		Long: `Show what the running server serves: its version and start time, its
data directory, its control and NBD sockets (and TCP listener), its FUSE
mount, or why it has none (volumes then have no file to attach), and how
many volumes it holds.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := clientFor(cmd).Status(cmd.Context())
			if err != nil {
				return err
			}
			return output(cmd, st, func(w io.Writer) error {
				fuse := st.FUSEMount
				if fuse == "" {
					fuse = "none"
					if st.FUSEError != "" {
						fuse += " (" + st.FUSEError + ")"
					}
				}
				rows := [][]string{
					{"version:", st.Version},
					{"started:", st.Started.Format(time.RFC3339)},
					{"data dir:", st.DataDir},
					{"api socket:", st.APISocket},
					{"nbd socket:", st.NBDSocket},
				}
				if st.NBDListen != "" {
					rows = append(rows, []string{"nbd tcp:", st.NBDListen})
				}
				rows = append(rows, []string{"fuse mount:", fuse}, []string{"volumes:", fmt.Sprint(st.Volumes)})
				for _, r := range rows {
					if _, err := fmt.Fprintf(w, "%-12s%s\n", r[0], r[1]); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
	addClientFlags(cmd)
	return cmd
}
