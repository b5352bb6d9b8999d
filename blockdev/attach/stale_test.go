package attach

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// loopDevNum gives the device numbers of /dev/loopN as the device node
// has them, which CleanStale matches mounts against.
func TestLoopDevNum(t *testing.T) {
	paths, _ := filepath.Glob("/sys/block/loop*/dev")
	if len(paths) == 0 {
		requireRoot(t) // fails under CI=true without /dev/loop-control
		t.Skip("no loop devices in /sys/block")
	}
	checked := 0
	defer func() {
		if checked == 0 {
			t.Errorf("none of the %d loop devices in /sys/block has a device node here: nothing checked", len(paths))
		}
	}()
	for _, p := range paths {
		n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(filepath.Dir(p)), "loop"))
		if err != nil {
			continue
		}
		major, minor, ok := loopDevNum(n)
		var st unix.Stat_t
		if err := unix.Stat("/dev/loop"+strconv.Itoa(n), &st); err != nil {
			continue // no device node in this namespace
		}
		checked++
		if !ok || major != unix.Major(st.Rdev) || minor != unix.Minor(st.Rdev) {
			t.Errorf("loop%d: loopDevNum %d:%d (ok %v), device node %d:%d", n, major, minor, ok, unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
	}
}
