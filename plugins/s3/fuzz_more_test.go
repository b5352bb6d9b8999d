package s3

// Fuzz targets for what an S3 server answers to a ranged GetObject: the
// Content-Range header and the check that it matches the range asked.
//
// Run one with, e.g.:
//
//	go test -run '^$' -fuzz '^FuzzParseContentRange$' -fuzztime 60s ./plugins/s3/

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/strata-block/strata/plugins"
)

// formatContentRange writes what parseContentRange reads (total < 0: "*").
func formatContentRange(first, last, total int64) string {
	size := "*"
	if total >= 0 {
		size = fmt.Sprint(total)
	}
	return fmt.Sprintf("bytes %d-%d/%s", first, last, size)
}

func FuzzParseContentRange(f *testing.F) {
	f.Add(formatContentRange(0, 0, 1))
	f.Add(formatContentRange(100, 199, 1000))
	f.Add(formatContentRange(5, 9, -1))
	f.Add(formatContentRange(0, math.MaxInt64-1, math.MaxInt64))
	f.Add(formatContentRange(10, 9, 100)) // last before first
	f.Add(formatContentRange(-1, 9, 100))
	f.Add("bytes 0-9/-1")
	f.Add("bytes +0-+9/+10")
	f.Add("bytes 0-9/10/11")
	f.Add("bytes 0-9-10/11")
	f.Add("bytes 0-9223372036854775808/1")
	f.Add("bytes */100") // a 416's Content-Range
	f.Add("Bytes 0-9/10")
	f.Add("bytes  0-9/10")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		first, last, total, ok := parseContentRange(s)
		if !ok {
			if first != 0 || last != 0 || total != 0 {
				t.Fatalf("refused %q with %d-%d/%d", s, first, last, total)
			}
			return
		}
		if first < 0 || last < first || total < -1 {
			t.Fatalf("accepted %q as %d-%d/%d", s, first, last, total)
		}
		if star := strings.HasSuffix(s, "/*"); star != (total == -1) {
			t.Fatalf("accepted %q as total %d", s, total)
		}
		canon := formatContentRange(first, last, total)
		f2, l2, t2, ok := parseContentRange(canon)
		if !ok || f2 != first || l2 != last || t2 != total {
			t.Fatalf("%q parsed as %d-%d/%d, re-encoded %q parses as %d-%d/%d (%v)", s, first, last, total, canon, f2, l2, t2, ok)
		}
	})
}

// FuzzCheckRange checks the answer to a ranged Get (offset, length < 0
// for "to the end") of n body bytes with Content-Range cr: it is taken
// only when the body is exactly the bytes asked for, as far as the object
// goes; every refusal is permanent.
func FuzzCheckRange(f *testing.F) {
	f.Add(formatContentRange(100, 199, 1000), int64(100), int64(100), int64(100))
	f.Add(formatContentRange(100, 999, 1000), int64(100), int64(-1), int64(900))
	f.Add(formatContentRange(100, 999, 1000), int64(100), int64(2000), int64(900)) // short at the object's end
	f.Add(formatContentRange(100, 149, 1000), int64(100), int64(100), int64(50))   // short before it
	f.Add(formatContentRange(100, 199, -1), int64(100), int64(100), int64(100))
	f.Add(formatContentRange(0, 199, 1000), int64(100), int64(100), int64(200)) // range ignored
	f.Add(formatContentRange(100, 1000, 1000), int64(100), int64(-1), int64(901))
	f.Add("", int64(0), int64(-1), int64(0))
	f.Fuzz(func(t *testing.T, cr string, offset, length, n int64) {
		// What Get can ask: a non-negative offset, a positive length or
		// -1, and a body no longer than asked.
		if offset < 0 || length < -1 || length == 0 || n < 0 || (length > 0 && n > length) {
			return
		}
		err := checkRange(&awss3.GetObjectOutput{ContentRange: &cr}, offset, length, n)
		if err != nil {
			if !errors.Is(err, plugins.ErrPermanent) {
				t.Fatalf("error %v is not permanent", err)
			}
			return
		}
		first, last, total, ok := parseContentRange(cr)
		if !ok || first != offset || last-first+1 != n {
			t.Fatalf("took Content-Range %q for offset %d and %d bytes", cr, offset, n)
		}
		if total < 0 {
			return
		}
		want := total - offset
		if length >= 0 {
			want = min(want, length)
		}
		if last >= total || n != want {
			t.Fatalf("took Content-Range %q for %d bytes at %d (length %d) of a %d-byte object", cr, n, offset, length, total)
		}
	})
}
