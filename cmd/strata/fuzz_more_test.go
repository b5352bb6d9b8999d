package main

// A fuzz target for parseSize, the byte sizes of the command line.
//
// Run it with:
//
//	go test -run '^$' -fuzz '^FuzzParseSize$' -fuzztime 60s ./cmd/strata/

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseSize checks that a size is refused with an error quoting it or
// read as a value in 0..2^62; that surrounding white space does not
// matter; and that the value written in bytes, or in its largest exact
// binary unit, reads back the same.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"4096", "512MiB", "1GiB", "10G", "1gb", "2 TiB", "3p", "7k", "7KB", "7Ki", "0", "007", " 1 m ",
		"4611686018427387904", "4611686018427387905", "4096P", "4097P", "", "GiB", "-1", "+1", "1.5G", "1XiB", "1iB", "1bi",
		"99999999999P", "١٢", "1\u00a0G"} {
		f.Add(s)
	}
	units := []struct {
		shift uint
		name  string
	}{{50, "PiB"}, {40, "TiB"}, {30, "GiB"}, {20, "MiB"}, {10, "KiB"}}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSize(s)
		if err != nil {
			if n != 0 {
				t.Fatalf("parseSize(%q) = %d with error %v", s, n, err)
			}
			if want := fmt.Sprintf("size %q: ", s); !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("error %q does not quote the size", err)
			}
			return
		}
		if n < 0 || n > 1<<62 {
			t.Fatalf("parseSize(%q) = %d: out of range", s, n)
		}
		for _, v := range []string{strings.TrimSpace(s), " \t" + s + "\n", strconv.FormatInt(n, 10)} {
			if got, err := parseSize(v); err != nil || got != n {
				t.Fatalf("parseSize(%q) = %d, but parseSize(%q) = %d, %v", s, n, v, got, err)
			}
		}
		for _, u := range units {
			if n != 0 && n%(1<<u.shift) == 0 {
				for _, v := range []string{fmt.Sprintf("%d%s", n>>u.shift, u.name), fmt.Sprintf("%d %s", n>>u.shift, strings.ToLower(u.name[:1]))} {
					if got, err := parseSize(v); err != nil || got != n {
						t.Fatalf("parseSize(%q) = %d, but parseSize(%q) = %d, %v", s, n, v, got, err)
					}
				}
				break
			}
		}
	})
}
