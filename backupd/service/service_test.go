package service

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/plugins"
)

func TestParseKeepWithin(t *testing.T) {
	for in, want := range map[string]time.Duration{"": 0, "7d": 7 * 24 * time.Hour, "1.5d": 36 * time.Hour, "36h": 36 * time.Hour, "90m": 90 * time.Minute} {
		got, err := ParseKeepWithin(in)
		if err != nil || got != want {
			t.Errorf("ParseKeepWithin(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"soon", "-1h", "-2d", "d", "1e6d", "Infd", "NaNd"} {
		if _, err := ParseKeepWithin(in); !errors.Is(err, blockdev.ErrInvalidArgument) {
			t.Errorf("ParseKeepWithin(%q): err %v, want invalid argument", in, err)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err, want error
	}{
		{fmt.Errorf("backup x: %w", plugins.ErrNotFound), blockdev.ErrNotFound},
		{fmt.Errorf("id: %w", backupd.ErrInvalid), blockdev.ErrInvalidArgument},
		{fmt.Errorf("key: %w", backupd.ErrKey), blockdev.ErrInvalidArgument},
		{fmt.Errorf("chunk: %w", backupd.ErrCorrupt), blockdev.ErrCorrupt},
		{fmt.Errorf("pack: %w", backupd.ErrMissing), blockdev.ErrCorrupt},
		{fmt.Errorf("vol: %w", blockdev.ErrInUse), blockdev.ErrInUse},
		// A pack missing under a backup: damage, not an unknown name.
		{fmt.Errorf("pack p: %w", fmt.Errorf("%w: %w", backupd.ErrMissing, plugins.ErrNotFound)), blockdev.ErrCorrupt},
	} {
		got := classify(c.err)
		if !errors.Is(got, c.want) || got.Error() != c.err.Error() {
			t.Errorf("classify(%v) = %v, does not match %v with the same message", c.err, got, c.want)
		}
		if !errors.Is(got, errors.Unwrap(c.err)) {
			t.Errorf("classify(%v) lost the original sentinel", c.err)
		}
	}
}
