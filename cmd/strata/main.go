package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signalContext()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes the command line args with ctx and returns the exit
// status. A failure is printed as one line on stderr and, with --json, as
// one {"error": "...", "code": "..."} line on stdout. (It returns a status
// rather than an error: the status depends on how the command failed.)
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(version)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err != nil {
		reportError(ctx, stdout, stderr, err, jsonRequested(cmd, args))
	}
	return exitStatus(ctx, err)
}

// signalContext returns a context cancelled on the first SIGINT or
// SIGTERM, with the signal as its cause (signalled), as
// signal.NotifyContext does but with a cause the exit status can read.
// Later signals are ignored until stop: "strata server" finishes its
// orderly shutdown however often Ctrl-C is pressed.
func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case s := <-ch:
			cancel(signalled{sig: s})
		case <-ctx.Done():
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		cancel(nil)
	}
}

// oneLine folds a possibly multi-line message (cobra's "Did you mean this?"
// suggestions, for example) into a single line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
