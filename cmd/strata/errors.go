package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/strata-block/strata/blockdev/agent"
)

// Exit statuses of strata, documented in the root command's Long help.
const (
	exitOK    = 0
	exitError = 1 // the verb failed (the server refused it, a value did not parse, ...)
	exitUsage = 2 // the command line is wrong: unknown command, argument count, flag
	// A verb interrupted by a signal exits 128 + the signal's number:
	// 130 for SIGINT (Ctrl-C), 143 for SIGTERM.
	exitSignalBase = 128
)

// Error codes of the {"error", "code"} line a failing verb prints with
// --json, besides the API's own codes (invalid, not_found, in_use, ...),
// which an error the server answered keeps.
const (
	codeError       = "error"       // a failure with no API code
	codeUsage       = "usage"       // exit status 2
	codeInterrupted = "interrupted" // exit status 128 + signal
)

// usageError is a command line the command cannot take: an unknown
// subcommand, the wrong number of arguments, an unknown or malformed flag,
// a required flag left out. strata exits 2 on it.
type usageError struct {
	msg string
	err error
}

func (e *usageError) Error() string { return e.msg }
func (e *usageError) Unwrap() error { return e.err }

// argsError wraps err, an argument or flag error of cmd, with the command
// path and its usage line (SilenceUsage keeps cobra from printing them).
func argsError(cmd *cobra.Command, err error) error {
	var ue *usageError
	if errors.As(err, &ue) {
		return err
	}
	return &usageError{msg: fmt.Sprintf("%s: %s (usage: %s)", cmd.CommandPath(), err.Error(), cmd.UseLine()), err: err}
}

// unknownCommandError is the error of a command that only groups
// subcommands, given arg as its first argument.
func unknownCommandError(cmd *cobra.Command, arg string) error {
	var names []string
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() {
			names = append(names, c.Name())
		}
	}
	msg := fmt.Sprintf("unknown command %q for %q", arg, cmd.CommandPath())
	if s := cmd.SuggestionsFor(arg); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %q?)", s[0])
	}
	msg += fmt.Sprintf("; its commands are %s (see %q)", strings.Join(names, ", "), cmd.CommandPath()+" --help")
	return &usageError{msg: msg, err: errors.New(msg)}
}

// signalled is the cause of the command context's cancellation when a
// signal (SIGINT, SIGTERM) interrupted strata.
type signalled struct{ sig os.Signal }

func (s signalled) Error() string { return s.sig.String() + " signal received" }

// interruptedBy returns the signal that cancelled ctx, if one did.
func interruptedBy(ctx context.Context) (os.Signal, bool) {
	var s signalled
	if ctx.Err() != nil && errors.As(context.Cause(ctx), &s) {
		return s.sig, true
	}
	return nil, false
}

// cancelledError is a wait for an operation that the server ties to the
// request (a streamed backup, restore, verify or system operation) ended
// by the command's interruption: the server cancels the operation when
// the request goes away, and msg says what that leaves behind.
type cancelledError struct {
	msg string
	err error
}

func (e *cancelledError) Error() string { return e.msg }
func (e *cancelledError) Unwrap() error { return e.err }

// cancelledOp returns err, or, if cmd's context was cancelled during the
// wait, a cancelledError saying that the server cancelled what, and what
// that leaves (after, may be empty).
func cancelledOp(cmd *cobra.Command, err error, what, after string) error {
	if err == nil || cmd.Context().Err() == nil {
		return err
	}
	msg := "interrupted: the server cancelled " + what + " (it ties an operation a command waits for to the command's request)"
	if after != "" {
		msg += "; " + after
	}
	return &cancelledError{msg: msg, err: err}
}

// errorCode is the code of the {"error", "code"} line for err.
func errorCode(ctx context.Context, err error) string {
	var (
		ae *agent.APIError
		ue *usageError
	)
	if errors.As(err, &ue) {
		return codeUsage
	}
	if _, ok := interruptedBy(ctx); ok {
		return codeInterrupted
	}
	if errors.As(err, &ae) && ae.Code != "" {
		return ae.Code
	}
	if _, code := agent.ErrorCode(err); code != "internal" {
		// A check of the CLI's own that wraps a blockdev sentinel
		// (ErrInvalidArgument: "invalid").
		return code
	}
	return codeError
}

// exitStatus is the exit status of a command that ended with err.
func exitStatus(ctx context.Context, err error) int {
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		return exitUsage
	}
	if sig, ok := interruptedBy(ctx); ok {
		if n, ok := sig.(syscall.Signal); ok {
			return exitSignalBase + int(n)
		}
		return exitSignalBase + int(syscall.SIGINT)
	}
	return exitError
}

// reportError prints err as one line on stderr and, if asJSON, as one
// {"error": "...", "code": "..."} line on stdout.
func reportError(ctx context.Context, stdout, stderr io.Writer, err error, asJSON bool) {
	msg := oneLine(err.Error())
	if _, ok := interruptedBy(ctx); ok && !strings.HasPrefix(msg, "interrupted") {
		msg = "interrupted: " + msg
	}
	fmt.Fprintln(stderr, msg)
	if !asJSON {
		return
	}
	line, jerr := json.Marshal(struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	}{Error: msg, Code: errorCode(ctx, err)})
	if jerr != nil {
		return
	}
	fmt.Fprintf(stdout, "%s\n", line)
}

// jsonRequested reports whether the command line asks for --json: the
// flag's value where cmd parsed it, else a scan of args (a command line
// whose flags did not parse).
func jsonRequested(cmd *cobra.Command, args []string) bool {
	if cmd != nil {
		if f := cmd.Flag("json"); f != nil && f.Changed {
			v, _ := strconv.ParseBool(f.Value.String())
			return v
		}
	}
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "--json" {
			return true
		}
		if v, ok := strings.CutPrefix(a, "--json="); ok {
			b, _ := strconv.ParseBool(v)
			return b
		}
	}
	return false
}

// noCoordinator turns the 404 a server without the coordinator answers
// to the /v1/system and /v1/agents routes (its mux knows no such route;
// an unknown system backup or agent is a JSON not_found instead) into
// an error that says so. c is the client that sent the request.
func noCoordinator(c *agent.Client, err error) error {
	var ae *agent.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusNotFound || ae.Code == "not_found" {
		return err
	}
	return &agent.APIError{
		Status: ae.Status,
		Code:   "unavailable",
		Message: fmt.Sprintf("the server at %s runs without the coordinator (strata server --coordinator=false), so it serves no system backups or agents: "+
			"point --socket (or $STRATA_SOCKET) at the control socket of the server that runs the coordinator (%s)", c.Addr(), ae.Message),
	}
}

// coordinatorDo is clientFor(cmd).Do for the coordinator's routes.
func coordinatorDo(cmd *cobra.Command, method, path string, in, out any) error {
	c := clientFor(cmd)
	return noCoordinator(c, c.Do(cmd.Context(), method, path, in, out))
}
