package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"
)

// versionInfo is the JSON form of `strata version --json`.
type versionInfo struct {
	Version string `json:"version"`
}

func newVersionCmd(ver string) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version of this binary",
		Long: `Print the version of this binary: "dev" unless the build set it with
-ldflags "-X main.version=...".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if asJSON {
				if err := json.NewEncoder(out).Encode(versionInfo{Version: ver}); err != nil {
					return fmt.Errorf("strata version: %w", err)
				}
				return nil
			}
			if _, err := fmt.Fprintln(out, ver); err != nil {
				return fmt.Errorf("strata version: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, `print {"version": "..."} as JSON`)
	return cmd
}
