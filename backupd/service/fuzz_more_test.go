package service

// A fuzz target for ParseKeepWithin, the retention window of prune
// requests.
//
// Run it with:
//
//	go test -run '^$' -fuzz '^FuzzParseKeepWithin$' -fuzztime 60s ./backupd/service/

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/strata-block/strata/blockdev"
)

// FuzzParseKeepWithin checks that a window is a Go duration or a number
// of days, never negative; that a Go duration reads as ParseDuration
// reads it and "Nd" as N days (to float64's precision); that what reads
// is written back by Duration.String and reads the same; and that every
// refusal is an invalid argument.
func FuzzParseKeepWithin(f *testing.F) {
	for _, s := range []string{"", "36h", "7d", "1.5d", "0d", "-0d", "0", "90m30s", "-1h", "-1d", "d", "1e3d", "0x10d", "1_0d",
		"106751d", "106752d", "1e309d", "infd", "NaNd", "+2d", "7dd", "7 d", "2562047h47m16.854775807s", "2562047h47m16.854775808s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseKeepWithin(s)
		if err != nil {
			if !errors.Is(err, blockdev.ErrInvalidArgument) {
				t.Fatalf("error %v is not an invalid argument", err)
			}
			if d != 0 {
				t.Fatalf("error %v with %v", err, d)
			}
			return
		}
		if d < 0 {
			t.Fatalf("ParseKeepWithin(%q) = %v: negative", s, d)
		}
		if s == "" && d != 0 {
			t.Fatalf(`ParseKeepWithin("") = %v`, d)
		}
		if days, ok := strings.CutSuffix(s, "d"); ok {
			n, err := strconv.ParseFloat(days, 64)
			if err != nil && !errors.Is(err, strconv.ErrRange) {
				t.Fatalf("ParseKeepWithin(%q) = %v: %q is not a number", s, d, days)
			}
			want := n * 24 * float64(time.Hour)
			if diff := math.Abs(float64(d) - want); diff > max(1, want*0x1p-51) {
				t.Fatalf("ParseKeepWithin(%q) = %v (%d ns), want %g ns", s, d, int64(d), want)
			}
		} else if want, err := time.ParseDuration(s); s != "" && (err != nil || want != d) {
			t.Fatalf("ParseKeepWithin(%q) = %v, ParseDuration gives %v, %v", s, d, want, err)
		}
		again, err := ParseKeepWithin(d.String())
		if err != nil || again != d {
			t.Fatalf("ParseKeepWithin(%q) = %v, written %q reads back as %v, %v", s, d, d.String(), again, err)
		}
	})
}
