package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/blockdev/agent"
)

const defaultDataDir = "./strata-data"

func addDataDirFlag(cmd *cobra.Command) {
	cmd.PersistentFlags().String("data-dir", "", "data directory (default $STRATA_DATA_DIR, else "+defaultDataDir+")")
}

func dataDirFlag(cmd *cobra.Command) string {
	if d := flagOrEnv(cmd, "data-dir", "STRATA_DATA_DIR"); d != "" {
		return d
	}
	return defaultDataDir
}

// addClientFlags adds the flags every verb that talks to the server has,
// and connects to the server they name before the verb runs (clientFor).
func addClientFlags(cmd *cobra.Command) {
	addDataDirFlag(cmd)
	f := cmd.PersistentFlags()
	f.String("socket", "", "the server: its control socket, unix:///path, or https://host:port (a server with api_listen) (default $STRATA_SOCKET, else DATA-DIR/strata.sock)")
	f.String("api-token-file", "", "file holding the bearer token of an https server (default $STRATA_TOKEN_FILE)")
	f.String("api-ca-file", "", "PEM roots to verify an https server's certificate with (default $STRATA_CA_FILE, else the system's)")
	f.Bool("json", false, "print the result as JSON")
	cmd.PersistentPreRunE = func(c *cobra.Command, _ []string) error {
		if c.Annotations[groupAnnotation] != "" {
			return nil // prints its help: no server needed
		}
		cl, err := dialServer(c)
		if err != nil {
			return err
		}
		c.SetContext(context.WithValue(c.Context(), clientKey{}, cl))
		return nil
	}
}

// clientKey is the context key of the command's server client.
type clientKey struct{}

// flagOrEnv is the value of flag name, else of environment variable env.
func flagOrEnv(cmd *cobra.Command, name, env string) string {
	if v, _ := cmd.Flags().GetString(name); v != "" {
		return v
	}
	return os.Getenv(env)
}

// dialServer returns the client of the server the command line names.
func dialServer(cmd *cobra.Command) (*agent.Client, error) {
	addr := flagOrEnv(cmd, "socket", "STRATA_SOCKET")
	if addr == "" {
		return agent.NewClient(agent.APISocket(dataDirFlag(cmd))), nil
	}
	c, err := agent.Dial(addr, agent.DialOptions{TokenFile: flagOrEnv(cmd, "api-token-file", "STRATA_TOKEN_FILE"), CAFile: flagOrEnv(cmd, "api-ca-file", "STRATA_CA_FILE")})
	if err != nil {
		return nil, fmt.Errorf("--socket: %w", err)
	}
	return c, nil
}

// clientFor is the client of the server the command talks to.
func clientFor(cmd *cobra.Command) *agent.Client {
	if c, ok := cmd.Context().Value(clientKey{}).(*agent.Client); ok {
		return c
	}
	if c, err := dialServer(cmd); err == nil {
		return c
	}
	return agent.NewClient(agent.APISocket(dataDirFlag(cmd)))
}

func jsonFlag(cmd *cobra.Command) bool {
	j, _ := cmd.Flags().GetBool("json")
	return j
}

// output prints v as JSON with --json, else calls human.
func output(cmd *cobra.Command, v any, human func(w io.Writer) error) error {
	w := cmd.OutOrStdout()
	if jsonFlag(cmd) {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	return human(w)
}

// table writes rows aligned in columns.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// parseSize reads a byte size: "4096", "512MiB", "1GiB", "10G", "1.5GiB"
// (binary units: K, M, G, T, P with optional "i" and "B",
// case-insensitive). A decimal is taken only when it comes to a whole
// number of bytes ("1.5K" is 1536; "1.3K" is refused); a size is at most
// 2^62 bytes.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	}
	whole, frac, dot := strings.Cut(num, ".")
	if whole == "" || (dot && (frac == "" || strings.Contains(frac, "."))) {
		return 0, fmt.Errorf("size %q: want a number with an optional unit (4096, 512MiB, 1GiB, 10G, 1.5GiB): %w", s, blockdev.ErrInvalidArgument)
	}
	unit = strings.TrimSuffix(strings.TrimSuffix(unit, "b"), "i")
	shift := map[string]uint{"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50}
	sh, ok := shift[unit]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit (use K, M, G, T or P, e.g. 512MiB): %w", s, blockdev.ErrInvalidArgument)
	}
	// (whole.frac) << sh, exactly: the digits as one integer, shifted,
	// divided by 10^len(frac).
	n, ok := new(big.Int).SetString(whole+frac, 10)
	if !ok {
		return 0, fmt.Errorf("size %q: want a number with an optional unit (4096, 512MiB, 1GiB, 10G, 1.5GiB): %w", s, blockdev.ErrInvalidArgument)
	}
	n.Lsh(n, sh)
	if frac != "" {
		var rem big.Int
		n.QuoRem(n, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(len(frac))), nil), &rem)
		if rem.Sign() != 0 {
			return 0, fmt.Errorf("size %q: not a whole number of bytes (sizes count whole bytes: write it in a smaller unit or as a whole number): %w", s, blockdev.ErrInvalidArgument)
		}
	}
	if n.Cmp(new(big.Int).Lsh(big.NewInt(1), 62)) > 0 {
		return 0, fmt.Errorf("size %q: out of range: %w", s, blockdev.ErrInvalidArgument)
	}
	return n.Int64(), nil
}

// humanSize renders bytes with a binary unit.
func humanSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return strings.TrimSuffix(strconv.FormatFloat(f, 'f', 1, 64), ".0") + " " + units[i]
}
