package attach

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	major, minor uint32
	mountPoint   string
	fsType       string
	source       string
}

// readMountInfo parses /proc/self/mountinfo (proc(5)).
func readMountInfo() ([]mountEntry, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return parseMountInfo(b)
}

func parseMountInfo(b []byte) ([]mountEntry, error) {
	var out []mountEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		// Fields are separated by single spaces; the kernel escapes a
		// space, tab, newline or backslash inside one (octal), and no
		// other byte: strings.Fields would also split at \v, \f, \r or
		// a Unicode space in a mount point's name.
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Split(pre, " "), strings.Split(post, " ")
		if !ok || len(f) < 5 || len(g) < 2 || slices.Contains(f[:5], "") || slices.Contains(g[:2], "") {
			return nil, fmt.Errorf("mountinfo: malformed line %q", line)
		}
		maj, min, ok := strings.Cut(f[2], ":")
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(min, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("mountinfo: bad device %q in line %q", f[2], line)
		}
		out = append(out, mountEntry{
			major: uint32(ma), minor: uint32(mi),
			mountPoint: unescapeOctal(f[4]),
			fsType:     g[0],
			source:     unescapeOctal(g[1]),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mountinfo: %w", err)
	}
	return out, nil
}

// unescapeOctal undoes the kernel's \ooo escaping of spaces, tabs,
// newlines and backslashes in mountinfo fields.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// refuseMounted fails with ErrBusy when a filesystem on the block device
// open as dev is mounted.
func refuseMounted(dev *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(dev.Fd()), &st); err != nil {
		return err
	}
	mps, err := mountsOf(unix.Major(st.Rdev), unix.Minor(st.Rdev))
	if err != nil {
		return err
	}
	if len(mps) > 0 {
		return fmt.Errorf("mounted on %s: %w", strings.Join(mps, ", "), ErrBusy)
	}
	return nil
}

// MountedFrom reports whether the filesystem mounted at dir (the topmost,
// if several are stacked there) is the one on block device dev. A caller
// about to unmount or freeze what a record says is its mount checks this
// first: after a restart the directory may hold something else (nothing
// mounted, so the filesystem holding dir; or another device's).
func MountedFrom(dir, dev string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return false, fmt.Errorf("stat %s: %w", dev, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return false, fmt.Errorf("%s is not a block device", dev)
	}
	mi, err := readMountInfo()
	if err != nil {
		return false, err
	}
	found := false
	for _, m := range mi {
		if m.mountPoint == dir {
			found = m.major == unix.Major(st.Rdev) && m.minor == unix.Minor(st.Rdev)
		}
	}
	return found, nil
}

// mountsOf returns the mount points of filesystems on device major:minor.
func mountsOf(major, minor uint32) ([]string, error) {
	mi, err := readMountInfo()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range mi {
		if m.major == major && m.minor == minor {
			out = append(out, m.mountPoint)
		}
	}
	return out, nil
}
