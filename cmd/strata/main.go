package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, oneLine(err.Error()))
		os.Exit(1)
	}
}

// run executes the command line in os.Args with a context that is cancelled
// on SIGINT or SIGTERM.
func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return newRootCmd(version).ExecuteContext(ctx)
}

// oneLine folds a possibly multi-line message (cobra's "Did you mean this?"
// suggestions, for example) into a single line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
