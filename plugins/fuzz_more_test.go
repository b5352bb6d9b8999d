package plugins

// A fuzz target for parseRights, the decoder of the data plane's
// ancillary data (SCM_RIGHTS messages).
//
// Run it with:
//
//	go test -run '^$' -fuzz '^FuzzParseRights$' -fuzztime 60s ./plugins/

import (
	"bytes"
	"encoding/binary"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzParseRights feeds parseRights control messages of any shape. The
// descriptors it would wrap as files are this test's own: before the
// call, every whole 4-byte descriptor slot of an SCM_RIGHTS message is
// overwritten with a fresh duplicate of /dev/null (the headers, which
// the fuzzer mutates, stay as they are), so that parseRights never wraps,
// and the test never closes, a descriptor of the fuzzing process.
//
// parseRights must fail exactly when the buffer does not parse as control
// messages, and otherwise return one file per descriptor of the
// SOL_SOCKET/SCM_RIGHTS messages, in order, and nothing for other
// messages.
func FuzzParseRights(f *testing.F) {
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = devNull.Close() })
	creds := unix.UnixCredentials(&unix.Ucred{Pid: 1, Uid: 2, Gid: 3})
	one, three := unix.UnixRights(0), unix.UnixRights(0, 0, 0)
	f.Add(one)
	f.Add(three)
	f.Add(unix.UnixRights())
	f.Add(append(bytes.Clone(one), three...))
	f.Add(creds)
	f.Add(append(bytes.Clone(creds), one...))
	f.Add(append(bytes.Clone(one), creds...))
	f.Add(one[:unix.CmsgLen(0)])   // header only, Len past the end
	f.Add(one[:unix.CmsgLen(0)-1]) // shorter than a header
	f.Add(append(bytes.Clone(one), 0))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, oob []byte) {
		oob = bytes.Clone(oob)
		msgs, perr := unix.ParseSocketControlMessage(oob)
		slots := 0
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_RIGHTS {
				slots += len(m.Data) / 4
			}
		}
		if slots > 256 {
			return // not to run out of descriptors
		}
		// owned holds the duplicates not yet handed to a file.
		var want []int
		owned := map[int]bool{}
		defer func() {
			for fd := range owned {
				_ = unix.Close(fd)
			}
		}()
		for _, m := range msgs { // m.Data aliases oob
			if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
				continue
			}
			for i := 0; i+4 <= len(m.Data); i += 4 {
				fd, err := unix.FcntlInt(devNull.Fd(), unix.F_DUPFD_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				owned[fd] = true
				want = append(want, fd)
				binary.NativeEndian.PutUint32(m.Data[i:], uint32(fd))
			}
		}
		files, err := func() (files []*os.File, err error) {
			defer func() {
				if p := recover(); p != nil {
					t.Fatalf("parseRights(%x) panicked: %v", oob, p)
				}
			}()
			return parseRights(oob)
		}()
		for _, fl := range files {
			if fl != nil {
				delete(owned, int(fl.Fd())) // closed by the file
			}
		}
		defer closeAll(files)
		if (err != nil) != (perr != nil) {
			t.Fatalf("parseRights(%x) = %v, ParseSocketControlMessage = %v", oob, err, perr)
		}
		if err != nil {
			if files != nil {
				t.Fatalf("parseRights(%x) failed (%v) with %d files", oob, err, len(files))
			}
			return
		}
		if len(files) != len(want) {
			t.Fatalf("parseRights(%x) = %d files, want %d", oob, len(files), len(want))
		}
		for i, fl := range files {
			if fl == nil || int(fl.Fd()) != want[i] {
				t.Fatalf("parseRights(%x): file %d is %v, want descriptor %d", oob, i, fl, want[i])
			}
		}
	})
}
