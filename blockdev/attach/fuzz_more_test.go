package attach

// Fuzz targets for the /proc/self/mountinfo parser (readMountInfo reads
// the file; parseMountInfo parses its bytes) and the unescaping of its
// fields.
//
// Run one with, e.g.:
//
//	go test -run '^$' -fuzz '^FuzzParseMountInfo$' -fuzztime 60s ./blockdev/attach/

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// escapeAll escapes every byte of s that is not printable ASCII other
// than a space or a backslash as \ooo: more than the kernel escapes,
// and what unescapeOctal undoes all the same.
func escapeAll(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == '\\' || c >= 0x7f {
			fmt.Fprintf(&b, `\%03o`, c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// escapeKernel escapes s as the kernel writes a mountinfo field
// (fs/proc_namespace.c, show_mountinfo: seq_path_root, seq_escape with
// " \t\n\\"): spaces, tabs, newlines and backslashes only.
func escapeKernel(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == ' ' || c == '\t' || c == '\n' || c == '\\' {
			fmt.Fprintf(&b, `\%03o`, c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// mountLine is a mountinfo line for e, its mount point and source
// escaped by esc and its type by typeEsc.
func mountLine(e mountEntry, esc, typeEsc func(string) string) string {
	return fmt.Sprintf("36 35 %d:%d / %s rw,relatime shared:1 - %s %s rw\n", e.major, e.minor, esc(e.mountPoint), typeEsc(e.fsType), esc(e.source))
}

func noEscape(s string) string { return s }

func FuzzParseMountInfo(f *testing.F) {
	f.Add([]byte(mountLine(mountEntry{major: 7, minor: 3, mountPoint: "/mnt/a", fsType: "ext4", source: "/dev/loop3"}, escapeKernel, escapeKernel)))
	f.Add([]byte("22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n" +
		"40 22 0:52 / /tmp/my\\040dir rw,nosuid - fuse.strata strata rw,user_id=0\n" +
		"41 22 0:53 / /x\\134y rw master:1 propagate_from:2 unbindable - tmpfs none rw"))
	f.Add([]byte("36 35 7:3 / /mnt/a rw ext4 /dev/loop3 rw\n"))            // no separator
	f.Add([]byte("36 35 7-3 / /mnt/a rw - ext4 /dev/loop3 rw\n"))          // bad device
	f.Add([]byte("36 35 4294967296:0 / /mnt/a rw - ext4 /dev/loop3 rw\n")) // major too large
	f.Add([]byte("36 35 7:3 / /mnt/a rw - ext4\n"))
	f.Add([]byte("36 35 7:3 / /a\\04 rw - ext4 \\400\\\n"))
	f.Add([]byte("\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		es, err := parseMountInfo(b)
		if err != nil {
			if es != nil {
				t.Fatalf("error %v with %d entries", err, len(es))
			}
			if !strings.HasPrefix(err.Error(), "mountinfo: ") {
				t.Fatalf("error %q does not say it is mountinfo's", err)
			}
			return
		}
		// One entry per line: the scanner's lines, a last one without
		// its newline included.
		if lines := bytes.Count(b, []byte("\n")); len(b) > 0 && b[len(b)-1] != '\n' {
			lines++
			if len(es) != lines {
				t.Fatalf("%d entries for %d lines", len(es), lines)
			}
		} else if len(es) != lines {
			t.Fatalf("%d entries for %d lines", len(es), lines)
		}
		for _, e := range es {
			if e.mountPoint == "" || e.fsType == "" || e.source == "" {
				t.Fatalf("accepted an entry with an empty field: %+v", e)
			}
		}
		// What was parsed, written again with the mount point and the
		// source escaped, parses the same. The type is written as it was
		// read: parseMountInfo keeps it as the kernel escaped it.
		var again bytes.Buffer
		for _, e := range es {
			again.WriteString(mountLine(e, escapeAll, noEscape))
		}
		es2, err := parseMountInfo(again.Bytes())
		if err != nil {
			t.Fatalf("%+v re-encoded as %q: %v", es, again.Bytes(), err)
		}
		if len(es2) != len(es) {
			t.Fatalf("%+v re-encoded parses as %+v", es, es2)
		}
		for i := range es {
			if es[i] != es2[i] {
				t.Fatalf("entry %d: %+v re-encoded parses as %+v", i, es[i], es2[i])
			}
		}
	})
}

// FuzzMountInfoKernelFields writes a mountinfo line as the kernel writes
// it, for a mount at any path (a directory name may hold any byte but
// NUL and '/' in its components), and checks that it parses back to the
// same mount point, type and source: MountedFrom and mountsOf compare
// them with the paths they are given.
func FuzzMountInfoKernelFields(f *testing.F) {
	f.Add(uint32(7), uint32(3), "/mnt/a", "ext4", "/dev/loop3")
	f.Add(uint32(0), uint32(52), "/tmp/my dir", "fuse.strata", "strata")
	f.Add(uint32(1<<12-1), uint32(1<<20-1), "/a\\b\tc\nd", "fuse.x", "a b")
	f.Add(uint32(8), uint32(1), "/mnt/été", "vfat", "/dev/sdb1")
	f.Add(uint32(8), uint32(1), "/mnt/a - b", "ext4", "-")
	f.Fuzz(func(t *testing.T, major, minor uint32, mountPoint, fsType, source string) {
		// The kernel never shows an empty field, nor a NUL; a mount
		// point is an absolute path.
		for _, s := range []string{mountPoint, fsType, source} {
			if s == "" || strings.IndexByte(s, 0) >= 0 {
				return
			}
		}
		if mountPoint[0] != '/' {
			return
		}
		e := mountEntry{major: major, minor: minor, mountPoint: mountPoint, fsType: fsType, source: source}
		line := mountLine(e, escapeKernel, escapeKernel)
		es, err := parseMountInfo([]byte(line))
		if err != nil {
			t.Fatalf("kernel line %q: %v", line, err)
		}
		// The type is kept as the kernel escaped it (nothing reads it).
		e.fsType = escapeKernel(fsType)
		if len(es) != 1 || es[0] != e {
			t.Fatalf("kernel line %q parses as %+v, want %+v", line, es, e)
		}
	})
}

func FuzzUnescapeOctal(f *testing.F) {
	f.Add(`/tmp/my\040dir`)
	f.Add(`\134\011\012`)
	f.Add(`\400\777\08\1`)
	f.Add(`\\040`)
	f.Add(`\`)
	f.Add("plain")
	f.Fuzz(func(t *testing.T, s string) {
		u := unescapeOctal(s)
		if !strings.Contains(s, `\`) && u != s {
			t.Fatalf("unescapeOctal(%q) = %q: changed a field without escapes", s, u)
		}
		if len(u) > len(s) {
			t.Fatalf("unescapeOctal(%q) = %q: longer", s, u)
		}
		if got := unescapeOctal(escapeAll(u)); got != u {
			t.Fatalf("unescapeOctal(escapeAll(%q)) = %q", u, got)
		}
		if got := unescapeOctal(escapeKernel(u)); got != u {
			t.Fatalf("unescapeOctal(escapeKernel(%q)) = %q", u, got)
		}
	})
}
