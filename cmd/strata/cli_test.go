package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-block/strata/backupd"
)

// runCLI runs strata with args and returns its exit status, stdout and
// stderr.
func runCLI(ctx context.Context, args ...string) (status int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	status = run(ctx, args, &out, &errOut)
	return status, out.String(), errOut.String()
}

// fakeServer serves h on a unix socket, as strata server serves its
// control API, and returns the socket's path.
func fakeServer(t *testing.T, h http.Handler) string {
	t.Helper()
	// Not t.TempDir: a unix socket path is at most 108 bytes.
	dir, err := os.MkdirTemp("", "strata-cli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	_ = srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return sock
}

// apiError answers as the agent does: {"error", "code"} with a status.
func apiError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg, "code": code})
}

// nowhere is a control socket no server listens on.
func nowhere(t *testing.T) string { return filepath.Join(t.TempDir(), "none.sock") }

// TestGroupCommandsRefuseUnknown: a mistyped subcommand of a command that
// only groups subcommands fails (exit 2) naming it and the valid ones,
// where cobra would print the group's help and exit 0; the group alone
// still prints its help and exits 0.
func TestGroupCommandsRefuseUnknown(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args       []string
		wantStatus int
		want       []string // in stderr
		wantOut    string   // in stdout
	}{
		{args: []string{"backup", "creat", "vol-a"}, wantStatus: exitUsage, want: []string{`unknown command "creat" for "strata backup"`, `did you mean "create"`, "create, gc, info, ls, prune, restore, rm, verify"}},
		{args: []string{"system", "backup", "creat"}, wantStatus: exitUsage, want: []string{`unknown command "creat" for "strata system backup"`, "create, info, ls, rm"}},
		{args: []string{"system", "restor", "ID"}, wantStatus: exitUsage, want: []string{`unknown command "restor" for "strata system"`, "backup, restore"}},
		{args: []string{"volume", "lss"}, wantStatus: exitUsage, want: []string{`unknown command "lss" for "strata volume"`, `"strata volume --help"`}},
		{args: []string{"snapshot", "delete", "vol-a", "s1"}, wantStatus: exitUsage, want: []string{`unknown command "delete" for "strata snapshot"`}},
		{args: []string{"target", "list"}, wantStatus: exitUsage, want: []string{`unknown command "list" for "strata target"`}},
		{args: []string{"agent", "remove", "b"}, wantStatus: exitUsage, want: []string{`unknown command "remove" for "strata agent"`}},
		{args: []string{"plugin", "serv", "fs"}, wantStatus: exitUsage, want: []string{`unknown command "serv" for "strata plugin"`}},
		{args: []string{"completion", "bsh"}, wantStatus: exitUsage, want: []string{`unknown command "bsh" for "strata completion"`}},
		{args: []string{"volum", "ls"}, wantStatus: exitUsage, want: []string{`unknown command "volum" for "strata"`, `did you mean "volume"`}},
		{args: []string{"backup", "creat", "--json"}, wantStatus: exitUsage, want: []string{`unknown command "creat"`}, wantOut: `"code":"usage"`},
		// Alone, a group prints its help.
		{args: []string{"backup"}, wantStatus: exitOK, wantOut: "Available Commands:"},
		{args: []string{"system", "backup"}, wantStatus: exitOK, wantOut: "Available Commands:"},
		{args: nil, wantStatus: exitOK, wantOut: "Available Commands:"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			status, stdout, stderr := runCLI(t.Context(), tc.args...)
			if status != tc.wantStatus {
				t.Errorf("exit status %d, want %d (stderr %q)", status, tc.wantStatus, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q does not say %q", stderr, w)
				}
			}
			if !strings.Contains(stdout, tc.wantOut) {
				t.Errorf("stdout %q does not hold %q", stdout, tc.wantOut)
			}
			if n := strings.Count(strings.TrimSpace(stderr), "\n"); n > 0 {
				t.Errorf("stderr is not one line: %q", stderr)
			}
		})
	}
}

// TestEveryGroupIsStrict walks the tree: a command added later that only
// groups subcommands is covered as well.
func TestEveryGroupIsStrict(t *testing.T) {
	t.Parallel()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.HasSubCommands() {
			err := c.Args(c, []string{"nope"})
			var ue *usageError
			if !c.Runnable() || err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), `unknown command "nope" for "`+c.CommandPath()+`"`) {
				t.Errorf("%s: runnable %v, args error %v; want an unknown-command usage error", c.CommandPath(), c.Runnable(), err)
			}
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRootCmd("dev"))
}

// TestArgErrorsNameCommand: argument-count and flag errors name the
// command and its usage line, and exit 2.
func TestArgErrorsNameCommand(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{args: []string{"volume", "grow", "vol-a", "2GiB"}, want: "strata volume grow: accepts 1 arg(s), received 2 (usage: strata volume grow NAME --size SIZE [flags])"},
		{args: []string{"volume", "grow", "vol-a"}, want: `strata volume grow: required flag(s) "size" not set (usage: strata volume grow NAME --size SIZE [flags])`},
		{args: []string{"volume", "ls", "--sise", "3"}, want: "strata volume ls: unknown flag: --sise (usage: strata volume ls [flags])"},
		{args: []string{"volume", "create", "--size"}, want: "strata volume create: flag needs an argument: --size (usage: strata volume create NAME SIZE [--target TARGET] [flags])"},
		{args: []string{"snapshot", "rm", "vol-a"}, want: "strata snapshot rm: accepts 2 arg(s), received 1 (usage: strata snapshot rm VOL SNAP [flags])"},
		{args: []string{"backup", "gc", "extra"}, want: `strata backup gc: unknown command "extra" for "strata backup gc" (usage: strata backup gc [flags])`},
		{args: []string{"backup", "restore", "0123"}, want: "strata backup restore: --to VOLUME is required (usage: strata backup restore ID --to VOLUME [--overwrite] [flags])"},
		{args: []string{"agent", "add", "b"}, want: "strata agent add: accepts 2 arg(s), received 1 (usage: strata agent add NAME ADDR [flags])"},
		{args: []string{"system", "backup", "create", "--timeout", "soon"}, want: `strata system backup create: invalid argument "soon" for "--timeout" flag`},
		{args: []string{"version", "x"}, want: `strata version: unknown command "x" for "strata version"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			status, _, stderr := runCLI(t.Context(), tc.args...)
			if status != exitUsage {
				t.Errorf("exit status %d, want %d", status, exitUsage)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q\nwant it to hold %q", stderr, tc.want)
			}
		})
	}
}

// TestGraceFlagError: a --grace that does not parse is reported as the
// --grace flag's, not as keep-within (the parser's name for it), and as
// invalid; --keep-within keeps its own name.
func TestGraceFlagError(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args         []string
		want, reject string
	}{
		{args: []string{"backup", "gc", "--grace", "5x"}, want: `--grace "5x": want a duration`, reject: "keep-within"},
		{args: []string{"backup", "gc", "--grace", "-1h"}, want: `--grace "-1h"`, reject: "keep-within"},
		{args: []string{"backup", "prune", "--keep-within", "soon"}, want: `--keep-within "soon": want a duration`},
		// Valid: the verb goes on to the server (none here).
		{args: []string{"backup", "gc", "--grace", "2d"}, want: "cannot reach the strata server", reject: `--grace "`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			status, stdout, stderr := runCLI(t.Context(), append(tc.args, "--socket", nowhere(t), "--json")...)
			if status != exitError {
				t.Errorf("exit status %d, want %d", status, exitError)
			}
			if !strings.Contains(stderr, tc.want) || (tc.reject != "" && strings.Contains(stderr, tc.reject)) {
				t.Errorf("stderr %q: want it to say %q and not %q", stderr, tc.want, tc.reject)
			}
			if strings.Contains(tc.want, "want a duration") && !strings.Contains(stdout, `"code":"invalid"`) {
				t.Errorf("stdout %q: want the code invalid", stdout)
			}
		})
	}
}

// errorLine is the line a failing verb prints on stdout with --json.
type errorLine struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// lastErrorLine decodes the last line of stdout strictly as an errorLine.
func lastErrorLine(t *testing.T, stdout string) errorLine {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	dec := json.NewDecoder(strings.NewReader(lines[len(lines)-1]))
	dec.DisallowUnknownFields()
	var el errorLine
	if err := dec.Decode(&el); err != nil {
		t.Fatalf("last line of stdout %q is not {\"error\", \"code\"}: %v", stdout, err)
	}
	return el
}

// TestJSONErrors: with --json a failing verb prints {"error", "code"} on
// stdout (the API's code when the server answered one), the plain line
// on stderr, and exits 1, or 2 for a usage error; without --json stdout
// stays empty.
func TestJSONErrors(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
		apiError(w, http.StatusNotFound, "not_found", fmt.Sprintf("volume %q: not found", r.PathValue("name")))
	})
	mux.HandleFunc("DELETE /v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
		apiError(w, http.StatusConflict, "in_use", fmt.Sprintf("volume %q is attached: detach it first: in use", r.PathValue("name")))
	})
	mux.HandleFunc("POST /v1/backups", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		fmt.Fprintln(w, `{"event":"error","error":"volume \"vol-a\" is busy: in use","code":"in_use"}`)
	})
	sock := fakeServer(t, mux)
	for _, tc := range []struct {
		name       string
		args       []string
		json       bool
		wantStatus int
		wantCode   string
		wantMsg    string
	}{
		{name: "api not_found", args: []string{"volume", "info", "vol-x"}, json: true, wantStatus: exitError, wantCode: "not_found", wantMsg: `volume "vol-x": not found`},
		{name: "api in_use", args: []string{"volume", "rm", "vol-a"}, json: true, wantStatus: exitError, wantCode: "in_use", wantMsg: "detach it first"},
		{name: "stream error event", args: []string{"backup", "create", "vol-a"}, json: true, wantStatus: exitError, wantCode: "in_use", wantMsg: "is busy"},
		{name: "usage", args: []string{"volume", "grow", "vol-a", "1GiB"}, json: true, wantStatus: exitUsage, wantCode: "usage", wantMsg: "accepts 1 arg(s)"},
		{name: "bad flag", args: []string{"volume", "ls", "--sise"}, json: true, wantStatus: exitUsage, wantCode: "usage", wantMsg: "unknown flag: --sise"},
		{name: "local check", args: []string{"volume", "create", "vol-b", "1.3K"}, json: true, wantStatus: exitError, wantCode: "invalid", wantMsg: "not a whole number of bytes"},
		{name: "keep-within", args: []string{"backup", "prune", "--keep-last", "1", "--keep-within", "soon"}, json: true, wantStatus: exitError, wantCode: "invalid", wantMsg: `--keep-within "soon"`},
		{name: "plain", args: []string{"volume", "info", "vol-x"}, wantStatus: exitError, wantMsg: `volume "vol-x": not found`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append(tc.args, "--socket", sock)
			if tc.json {
				args = append(args, "--json")
			}
			status, stdout, stderr := runCLI(t.Context(), args...)
			if status != tc.wantStatus {
				t.Errorf("exit status %d, want %d", status, tc.wantStatus)
			}
			if !strings.Contains(stderr, tc.wantMsg) || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
				t.Errorf("stderr %q: want one line saying %q", stderr, tc.wantMsg)
			}
			if !tc.json {
				if stdout != "" {
					t.Errorf("stdout %q, want nothing", stdout)
				}
				return
			}
			el := lastErrorLine(t, stdout)
			if el.Code != tc.wantCode || el.Error != strings.TrimSpace(stderr) {
				t.Errorf("error line %+v, want code %q and the error %q", el, tc.wantCode, strings.TrimSpace(stderr))
			}
		})
	}
}

// TestInterruptedWait: Ctrl-C during a streamed operation the server ties
// to the request exits 130 (143 for SIGTERM) and says that the server
// cancelled the operation, and what that leaves, instead of "context
// canceled"; the server sees the request end.
func TestInterruptedWait(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		args       []string
		existing   bool // vol-r exists before the restore
		sig        syscall.Signal
		json       bool
		want       []string
		wantStatus int
	}{
		{name: "restore into an existing volume", args: []string{"backup", "restore", "0123", "--to", "vol-r"}, existing: true, sig: syscall.SIGINT, wantStatus: 130,
			want: []string{"the server cancelled the restore of backup 0123 into vol-r", "partly overwritten", "run the restore again"}},
		{name: "restore into a new volume", args: []string{"backup", "restore", "0123", "--to", "vol-r"}, sig: syscall.SIGINT, wantStatus: 130,
			want: []string{"the server cancelled the restore of backup 0123 into vol-r", "the server removes the volume vol-r"}},
		{name: "backup sigterm", args: []string{"backup", "create", "vol-a"}, sig: syscall.SIGTERM, wantStatus: 143,
			want: []string{"the server cancelled the backup of vol-a", "--no-wait"}},
		{name: "verify json", args: []string{"backup", "verify", "0123"}, sig: syscall.SIGINT, json: true, wantStatus: 130,
			want: []string{"the server cancelled the verify of backup 0123"}},
		{name: "system backup", args: []string{"system", "backup", "create"}, sig: syscall.SIGINT, wantStatus: 130,
			want: []string{"the server cancelled the system backup", "commits no manifest"}},
		{name: "system restore", args: []string{"system", "restore", "s-1"}, sig: syscall.SIGINT, wantStatus: 130,
			want: []string{"the server cancelled the system restore", "run it again"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			started := make(chan struct{})
			ended := make(chan struct{})
			// A streamed operation: one progress event, then nothing until
			// the client goes away.
			stream := func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/x-ndjson")
				fmt.Fprintln(w, `{"event":"progress","op":"x","volume":"vol-a","bytes_total":1048576,"bytes_scanned":4096}`)
				w.(http.Flusher).Flush()
				close(started)
				<-r.Context().Done()
				close(ended)
			}
			mux := http.NewServeMux()
			mux.HandleFunc("GET /v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
				if !tc.existing {
					apiError(w, http.StatusNotFound, "not_found", "no such volume")
					return
				}
				_ = json.NewEncoder(w).Encode(map[string]any{"name": r.PathValue("name"), "size": 1 << 20})
			})
			for _, p := range []string{"POST /v1/backups", "POST /v1/backups/{id}/restore", "POST /v1/backups/{id}/verify", "POST /v1/system/backups", "POST /v1/system/restore"} {
				mux.HandleFunc(p, stream)
			}
			sock := fakeServer(t, mux)
			ctx, cancel := context.WithCancelCause(t.Context())
			defer cancel(nil)
			go func() {
				select {
				case <-started:
					cancel(signalled{sig: tc.sig})
				case <-ctx.Done():
				}
			}()
			args := append(tc.args, "--socket", sock)
			if tc.json {
				args = append(args, "--json")
			}
			status, stdout, stderr := runCLI(ctx, args...)
			t.Logf("stderr: %s", stderr)
			if status != tc.wantStatus {
				t.Errorf("exit status %d, want %d", status, tc.wantStatus)
			}
			for _, w := range append(tc.want, "interrupted: ") {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q does not say %q", stderr, w)
				}
			}
			if tc.json {
				if el := lastErrorLine(t, stdout); el.Code != codeInterrupted {
					t.Errorf("error line %+v, want code %q", el, codeInterrupted)
				}
			}
			<-ended // the server saw the request end
		})
	}
}

// TestNoCoordinator: a server without the coordinator answers the system
// and agent routes 404 (no such route): the error says so and where to
// point --socket; a JSON not_found from a coordinator (an unknown id) is
// left as it is.
func TestNoCoordinator(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux() // an agent's routes only
	mux.HandleFunc("GET /v1/volumes", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "[]") })
	noCoord := fakeServer(t, mux)
	coord := http.NewServeMux()
	coord.HandleFunc("GET /v1/system/backups/{id}", func(w http.ResponseWriter, r *http.Request) {
		apiError(w, http.StatusNotFound, "not_found", fmt.Sprintf("system backup %q: not found", r.PathValue("id")))
	})
	withCoord := fakeServer(t, coord)
	for _, tc := range []struct {
		args   []string
		sock   string
		want   []string
		reject string
	}{
		{args: []string{"system", "backup", "ls"}, sock: noCoord, want: []string{"runs without the coordinator", "--coordinator=false", "point --socket", "404"}},
		{args: []string{"system", "backup", "info", "s-1"}, sock: noCoord, want: []string{"--coordinator=false"}},
		{args: []string{"system", "backup", "rm", "s-1"}, sock: noCoord, want: []string{"--coordinator=false"}},
		{args: []string{"system", "backup", "create"}, sock: noCoord, want: []string{"--coordinator=false"}},
		{args: []string{"system", "restore", "s-1"}, sock: noCoord, want: []string{"--coordinator=false"}},
		{args: []string{"agent", "ls"}, sock: noCoord, want: []string{"--coordinator=false", "point --socket"}},
		{args: []string{"agent", "add", "b", "/x.sock"}, sock: noCoord, want: []string{"--coordinator=false"}},
		{args: []string{"agent", "rm", "b"}, sock: noCoord, want: []string{"--coordinator=false"}},
		{args: []string{"system", "backup", "info", "s-1"}, sock: withCoord, want: []string{`system backup "s-1": not found`}, reject: "coordinator"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			status, _, stderr := runCLI(t.Context(), append(tc.args, "--socket", tc.sock)...)
			t.Logf("stderr: %s", stderr)
			if status != exitError {
				t.Errorf("exit status %d, want %d", status, exitError)
			}
			for _, w := range append(tc.want, tc.sock) {
				if w == tc.sock && tc.reject != "" {
					continue
				}
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q does not say %q", stderr, w)
				}
			}
			if tc.reject != "" && strings.Contains(stderr, tc.reject) {
				t.Errorf("stderr %q says %q", stderr, tc.reject)
			}
		})
	}
}

// TestByteBarIEC: the progress bar counts in KiB/MiB/GiB, as every other
// line does, not in SI MB.
func TestByteBarIEC(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	bar := newByteBar(&buf, 100<<20, "restoring")
	if err := bar.Set64(50 << 20); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if !strings.Contains(out, "50/100 MiB") || strings.Contains(out, " MB") {
		t.Errorf("bar %q: want 50/100 MiB, no MB", out)
	}
}

// TestBarPosition: a bar follows an operation's position through the
// volume, so an incremental backup that scans little, or a restore into a
// new volume that writes no zeros, still ends full; verify, which has no
// position, follows the bytes it read.
func TestBarPosition(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		p    backupd.Progress
		want int64
	}{
		{"incremental", backupd.Progress{Op: "backup", BytesTotal: 1 << 30, Position: 1 << 30, BytesScanned: 4 << 20}, 1 << 30},
		{"sparse restore", backupd.Progress{Op: "restore", BytesTotal: 1 << 30, Position: 512 << 20, BytesWritten: 1 << 20}, 512 << 20},
		{"verify", backupd.Progress{Op: "verify", BytesTotal: 8 << 20, BytesScanned: 3 << 20}, 3 << 20},
		{"past the total", backupd.Progress{Op: "verify", BytesTotal: 8 << 20, BytesScanned: 9 << 20}, 8 << 20},
	}
	for _, tc := range tests {
		if got := barPosition(&tc.p); got != tc.want {
			t.Errorf("%s: bar at %d, want %d", tc.name, got, tc.want)
		}
	}
}

// TestHelpMatchesCode: help texts say what the code does.
func TestHelpMatchesCode(t *testing.T) {
	t.Parallel()
	root := newRootCmd("dev")
	find := func(path ...string) *cobra.Command {
		c, _, err := root.Find(path)
		if err != nil {
			t.Fatalf("%v: %v", path, err)
		}
		return c
	}
	// backupd.Repository.GC: Grace defaults to
	// max(2×MaxDuration, MaxDuration+2×Margin).
	grace := find("backup", "gc").Flag("grace").Usage
	for _, w := range []string{"2 × the server's --backup-max-duration", "--backup-max-duration + 2 × --backup-gc-margin"} {
		if !strings.Contains(grace, w) {
			t.Errorf("backup gc --grace help %q does not say %q", grace, w)
		}
	}
	// backupd.Repository.Prune: the window ends at the newest counted
	// backup, or now if earlier; held and future backups count for no rule.
	prune := find("backup", "prune")
	for _, w := range []string{"or before now if\nthat is earlier", "system backup holds", "in the future", "count towards neither rule"} {
		if !strings.Contains(prune.Long, w) {
			t.Errorf("backup prune help does not say %q", w)
		}
	}
	if u := prune.Flag("keep-within").Usage; !strings.Contains(u, "or now if earlier") {
		t.Errorf("--keep-within help %q does not say the window may end now", u)
	}
	// The root's claim about --json: every runnable verb has the flag but
	// those the help names as printing no result.
	noJSON := map[string]bool{"strata server": true, "strata plugin serve": true}
	for w := range noJSON {
		if !strings.Contains(root.Long, `"`+w+`"`) {
			t.Errorf("root help does not name %q among the verbs without --json", w)
		}
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, s := range c.Commands() {
			walk(s)
		}
		if c.HasSubCommands() || !c.Runnable() || noJSON[c.CommandPath()] || strings.HasPrefix(c.CommandPath(), "strata completion") {
			return
		}
		if c.Flag("json") == nil {
			t.Errorf("%s has no --json, but the root help says every verb but %v has", c.CommandPath(), noJSON)
		}
	}
	walk(root)
	for _, w := range []string{"Exit status", "2 the command line is wrong", "130 interrupted by Ctrl-C", `{"error": "...", "code": "..."}`} {
		if !strings.Contains(root.Long, w) {
			t.Errorf("root help does not say %q", w)
		}
	}
}

// TestProgressLines: where no bar can be drawn, a wait prints a line of
// progress every interval, none before the first interval has passed.
// Before, a backup or restore of hours printed nothing until it ended.
func TestProgressLines(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	l := &progressLines{w: &buf, what: "restoring 0123", every: time.Hour}
	p := &backupd.Progress{Op: "restore", Phase: backupd.PhaseRestore, BytesTotal: 4 << 30, Position: 1 << 30}
	l.show(p)
	l.show(p)
	if buf.Len() != 0 {
		t.Fatalf("printed before the first interval: %q", buf.String())
	}
	l.next = time.Now().Add(-time.Second) // the interval has passed
	l.show(p)
	if got, want := buf.String(), "restoring 0123: restore 25% (1 GiB of 4 GiB)\n"; got != want {
		t.Fatalf("progress line %q, want %q", got, want)
	}
	l.show(p)
	if strings.Count(buf.String(), "\n") != 1 {
		t.Fatalf("a second line within the interval: %q", buf.String())
	}
}

// TestGroupHelpNeedsNoServer: a group command given no subcommand prints
// its help without connecting to the server (whose address may not even
// dial: an https one without its token).
func TestGroupHelpNeedsNoServer(t *testing.T) {
	t.Parallel()
	status, stdout, stderr := runCLI(t.Context(), "volume", "--socket", "https://127.0.0.1:1")
	if status != exitOK || !strings.Contains(stdout+stderr, "Available Commands") {
		t.Fatalf("strata volume --socket https://...: status %d, stdout %q, stderr %q; want its help", status, stdout, stderr)
	}
}
