package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/strata-block/strata/backupd/targets"
)

func newTargetCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "target",
		Short: "Register, list, test and remove backup targets",
		Long: `Backup targets store volume backups: a directory (file:///srv/backups, NFS
included) or an S3 bucket (s3://bucket/prefix?endpoint=http://host:port&region=us-east-1).
Credentials stay in a file you keep (KEY=value lines such as
AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=...): strata records its path,
never its content, and never prints or logs a secret.`,
	}
	addClientFlags(cmd)
	cmd.AddCommand(targetAddCmd(), targetLsCmd(), targetSetCmd(), targetRmCmd(), targetTestCmd())
	return cmd
}

func targetAddCmd() *cobra.Command {
	var (
		creds string
		def   bool
	)
	cmd := &cobra.Command{
		Use:   "add NAME URL|DIR",
		Short: "Register a target (it must answer now); the first one becomes the default",
		Long: `Register a backup target: file:///path (or an absolute directory path), or
s3://bucket/prefix?endpoint=URL&region=R with --credentials FILE. It must
answer now; the first one registered becomes the default.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			u := args[1]
			if filepath.IsAbs(u) {
				// A directory: the fs target's URL.
				u = "file://" + filepath.Clean(u)
			}
			req := targets.AddRequest{Name: args[0], URL: u, Default: def}
			if creds != "" {
				abs, err := filepath.Abs(creds)
				if err != nil {
					return err
				}
				req.CredentialsFile = abs
			}
			var t targets.Target
			if err := clientFor(cmd).Do(cmd.Context(), http.MethodPost, "/v1/targets", req, &t); err != nil {
				return err
			}
			return output(cmd, t, func(w io.Writer) error {
				def := ""
				if t.Default {
					def = " (default)"
				}
				_, err := fmt.Fprintf(w, "added target %s: %s %s%s\n", t.Name, t.Kind, t.URL, def)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&creds, "credentials", "", "file of KEY=value credential lines (kept where it is; only its path is recorded)")
	cmd.Flags().BoolVar(&def, "default", false, "make this the default target")
	return cmd
}

func targetLsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List targets",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ts []targets.Target
			if err := clientFor(cmd).Do(cmd.Context(), http.MethodGet, "/v1/targets", nil, &ts); err != nil {
				return err
			}
			return output(cmd, ts, func(w io.Writer) error {
				rows := make([][]string, 0, len(ts))
				for _, t := range ts {
					def, creds := "", "environment"
					if t.Default {
						def = "*"
					}
					if t.CredentialsFile != "" {
						creds = t.CredentialsFile
					}
					rows = append(rows, []string{t.Name, def, t.Kind, t.URL, creds})
				}
				return table(w, []string{"NAME", "DEFAULT", "KIND", "URL", "CREDENTIALS"}, rows)
			})
		},
	}
}

func targetSetCmd() *cobra.Command {
	var def bool
	cmd := &cobra.Command{
		Use:   "set NAME --default",
		Short: "Make a registered target the default (volumes without a target of their own use it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !def {
				return argsError(cmd, errors.New("nothing to set: --default is the one setting"))
			}
			var t targets.Target
			if err := clientFor(cmd).Do(cmd.Context(), http.MethodPost, "/v1/targets/"+url.PathEscape(args[0])+"/default", nil, &t); err != nil {
				return err
			}
			return output(cmd, t, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "target %s is the default\n", t.Name)
				return err
			})
		},
	}
	cmd.Flags().BoolVar(&def, "default", false, "make NAME the default target")
	return cmd
}

func targetRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME",
		Short: "Unregister a target (its stored backups are left alone)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := clientFor(cmd).Do(cmd.Context(), http.MethodDelete, "/v1/targets/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			return done(cmd, "removed target "+args[0], map[string]any{"target": args[0]})
		},
	}
}

func targetTestCmd() *cobra.Command {
	var size string
	cmd := &cobra.Command{
		Use:   "test NAME",
		Short: "Round-trip an object through a target and print latency and throughput",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseSize(size)
			if err != nil {
				return err
			}
			var res targets.TestResult
			if err := clientFor(cmd).Do(cmd.Context(), http.MethodPost, "/v1/targets/"+url.PathEscape(args[0])+"/test", targets.TestRequest{Size: n}, &res); err != nil {
				return err
			}
			return output(cmd, res, func(w io.Writer) error {
				fmt.Fprintf(w, "target %s (%s): round trip of %s OK; conditional create: %s\n", res.Target, res.Kind, humanSize(res.Size), res.ConditionalPuts)
				fmt.Fprintf(w, "  put    %8.1f ms  %s/s\n", res.PutMillis, humanSize(int64(res.PutBytesPerSec)))
				fmt.Fprintf(w, "  get    %8.1f ms  %s/s\n", res.GetMillis, humanSize(int64(res.GetBytesPerSec)))
				fmt.Fprintf(w, "  has    %8.1f ms\n", res.HasMillis)
				_, err := fmt.Fprintf(w, "  delete %8.1f ms\n", res.DeleteMillis)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&size, "size", "4MiB", "size of the probe object (4MiB, 1.5MiB: binary units, whole bytes)")
	return cmd
}
