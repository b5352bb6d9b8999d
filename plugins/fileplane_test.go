package plugins

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

// fakePlugin is the plugin's end of a data plane whose open requests a
// test answers by hand: next returns the reply socket of the next one.
type fakePlugin struct {
	t    *testing.T
	host *hostPlane
	sock *os.File
}

func newFakePlugin(t *testing.T) *fakePlugin {
	t.Helper()
	hp, child, err := newHostPlane()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = hp.close()
		_ = child.Close()
	})
	return &fakePlugin{t: t, host: hp, sock: child}
}

// next receives an open request and returns its key and reply socket.
func (p *fakePlugin) next() (string, *os.File) {
	p.t.Helper()
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := unix.Recvmsg(int(p.sock.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		p.t.Errorf("fake plugin: recvmsg: %v", err)
		return "", nil
	}
	files, err := parseRights(oob[:oobn])
	if err != nil || len(files) != 1 {
		p.t.Errorf("fake plugin: %d descriptors, %v", len(files), err)
		return "", nil
	}
	key, _, _, err := parseOpenRequest(buf[:n])
	if err != nil {
		p.t.Errorf("fake plugin: %v", err)
	}
	return key, files[0]
}

// reply sends an open reply on the reply socket r, with f attached if
// not nil, and closes r.
func reply(t *testing.T, r *os.File, code uint32, off, n int64, text string, f *os.File) {
	t.Helper()
	defer r.Close()
	msg := make([]byte, openReplySize, openReplySize+len(text))
	binary.BigEndian.PutUint32(msg, code)
	binary.BigEndian.PutUint64(msg[4:], uint64(off))
	binary.BigEndian.PutUint64(msg[12:], uint64(n))
	msg = append(msg, text...)
	var oob []byte
	if f != nil {
		oob = unix.UnixRights(int(f.Fd()))
	}
	if err := unix.Sendmsg(int(r.Fd()), msg, oob, nil, 0); err != nil {
		t.Errorf("fake plugin: sendmsg: %v", err)
	}
}

func tempFile(t *testing.T, data []byte) *os.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "obj")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// The host checks every open reply before it reads: a descriptor that is
// not a regular file, a range the file does not hold, more bytes than
// asked for, descriptors where none belong, and malformed messages fail
// the Get with a permanent error naming what is wrong; error replies keep
// their class; codeNotFile is errNotFile.
func TestGetFileReplies(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte("0123456789abcdef"), 64) // 1 KiB
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pr.Close(); _ = pw.Close() })
	tests := []struct {
		name   string
		offset int64
		length int64
		send   func(t *testing.T, r *os.File)
		want   []byte // on success
		class  error  // on failure
		text   string // in the error
	}{
		{name: "whole", length: -1, want: data, send: func(t *testing.T, r *os.File) {
			reply(t, r, 0, 0, int64(len(data)), "", tempFile(t, data))
		}},
		{name: "to the end", offset: 100, length: -1, want: data[100:], send: func(t *testing.T, r *os.File) {
			reply(t, r, 0, 100, int64(len(data)-100), "", tempFile(t, data))
		}},
		{name: "range", offset: 5, length: 10, want: data[5:15], send: func(t *testing.T, r *os.File) {
			reply(t, r, 0, 5, 10, "", tempFile(t, data))
		}},
		{name: "not found", length: -1, class: ErrNotFound, text: "no such object", send: func(t *testing.T, r *os.File) {
			reply(t, r, uint32(codes.NotFound), 0, 0, "no such object", nil)
		}},
		{name: "transient", length: -1, class: ErrTransient, text: "busy", send: func(t *testing.T, r *os.File) {
			reply(t, r, uint32(codes.Unavailable), 0, 0, "busy", nil)
		}},
		{name: "not a file", length: -1, class: errNotFile, send: func(t *testing.T, r *os.File) {
			reply(t, r, codeNotFile, 0, 0, "", nil)
		}},
		{name: "pipe", length: -1, class: ErrPermanent, text: "not a regular file", send: func(t *testing.T, r *os.File) {
			reply(t, r, 0, 0, 0, "", pr)
		}},
		{name: "clipped at the end", offset: 1000, length: 100, want: data[1000:], send: func(t *testing.T, r *os.File) {
			reply(t, r, 0, 1000, 24, "", tempFile(t, data))
		}},
		{name: "empty at the end", offset: 1024, length: -1, want: []byte{}, send: func(t *testing.T, r *os.File) {
			reply(t, r, 0, 1024, 0, "", tempFile(t, data))
		}},
		{name: "another offset", offset: 512, length: 10, class: ErrPermanent, text: "range from 0 for a request from 512", send: func(t *testing.T, r *os.File) {
			reply(t, r, 0, 0, 10, "", tempFile(t, data))
		}},
		{name: "short of the length", offset: 5, length: 10, class: ErrPermanent, text: "9 bytes from 5 of a 1024-byte file for a request of length 10, which must yield 10", send: func(t *testing.T, r *os.File) {
			reply(t, r, 0, 5, 9, "", tempFile(t, data))
		}},
		{name: "short of the end", offset: 100, length: -1, class: ErrPermanent, text: "10 bytes from 100 of a 1024-byte file for a request of length -1, which must yield 924", send: func(t *testing.T, r *os.File) {
			reply(t, r, 0, 100, 10, "", tempFile(t, data))
		}},
		{name: "offset past the end", offset: 2000, length: -1, class: ErrPermanent, text: "range from 1024 for a request from 2000", send: func(t *testing.T, r *os.File) {
			reply(t, r, 0, 1024, 0, "", tempFile(t, data))
		}},
		{name: "past the end", offset: 1000, length: -1, class: ErrPermanent, text: "range 1000+100 of a 1024-byte file", send: func(t *testing.T, r *os.File) {
			reply(t, r, 0, 1000, 100, "", tempFile(t, data))
		}},
		{name: "negative", length: -1, class: ErrPermanent, text: "range -1+10", send: func(t *testing.T, r *os.File) {
			reply(t, r, 0, -1, 10, "", tempFile(t, data))
		}},
		{name: "more than asked", length: 10, class: ErrPermanent, text: "20 bytes for a 10-byte request", send: func(t *testing.T, r *os.File) {
			reply(t, r, 0, 0, 20, "", tempFile(t, data))
		}},
		{name: "success without a descriptor", length: -1, class: ErrPermanent, text: "a success with 0 descriptors", send: func(t *testing.T, r *os.File) {
			reply(t, r, 0, 0, 10, "", nil)
		}},
		{name: "error with a descriptor", length: -1, class: ErrPermanent, text: "code 5 with 1 descriptors", send: func(t *testing.T, r *os.File) {
			reply(t, r, uint32(codes.NotFound), 0, 0, "", tempFile(t, data))
		}},
		{name: "short message", length: -1, class: ErrPermanent, text: "a 3-byte reply", send: func(t *testing.T, r *os.File) {
			defer r.Close()
			if err := unix.Sendmsg(int(r.Fd()), []byte{1, 2, 3}, nil, nil, 0); err != nil {
				t.Error(err)
			}
		}},
		{name: "no answer", length: -1, class: ErrTransient, text: "without an answer", send: func(t *testing.T, r *os.File) {
			_ = r.Close()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := newFakePlugin(t)
			c := &client{plane: p.host, fileGet: true}
			done := make(chan struct{})
			defer func() { <-done }()
			go func() {
				defer close(done)
				key, r := p.next()
				if key != "k" {
					t.Errorf("request for %q", key)
				}
				if r != nil {
					tt.send(t, r)
				}
			}()
			rc, n, err := c.getFile(t.Context(), "k", tt.offset, tt.length)
			if tt.want == nil {
				if err == nil {
					rc.Close()
					t.Fatalf("succeeded with %d bytes", n)
				}
				if !errors.Is(err, tt.class) || !strings.Contains(err.Error(), tt.text) {
					t.Fatalf("error %q, want %v containing %q", err, tt.class, tt.text)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if err != nil || n != int64(len(tt.want)) || !bytes.Equal(got, tt.want) {
				t.Fatalf("read %d bytes (announced %d), %v; want %d", len(got), n, err, len(tt.want))
			}
		})
	}
}

// A plugin that never answers holds a Get only as long as its context;
// a reply that comes later is dropped with its descriptor.
func TestGetFileCancelled(t *testing.T) {
	t.Parallel()
	p := newFakePlugin(t)
	c := &client{plane: p.host, fileGet: true}
	got := make(chan *os.File, 1)
	go func() {
		_, r := p.next()
		got <- r
	}()
	// got is always received below, so the goroutine ends with the test.
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err := c.getFile(ctx, "k", 0, -1)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want the context's", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("returned after %v", d)
	}
	r := <-got
	if r == nil {
		t.FailNow()
	}
	// The host's end is gone: the late reply finds nobody.
	msg := make([]byte, openReplySize)
	err = unix.Sendmsg(int(r.Fd()), msg, nil, nil, unix.MSG_NOSIGNAL)
	_ = r.Close()
	if !errors.Is(err, unix.EPIPE) && !errors.Is(err, unix.ECONNREFUSED) && !errors.Is(err, unix.ECONNRESET) {
		t.Fatalf("late reply: %v, want the host's end closed", err)
	}
}

// FuzzOpenMessages checks that the decoders of the requests and replies
// on the data plane (fileplane.go) accept
// or reject any bytes without panicking, and that what they accept
// reads back as it was encoded.
func FuzzOpenMessages(f *testing.F) {
	f.Add([]byte{'O', 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 'k'})
	f.Add(make([]byte, openReplySize))
	f.Add([]byte("O"))
	f.Add([]byte{'P', 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 'k'})
	f.Fuzz(func(t *testing.T, msg []byte) {
		if key, off, length, err := parseOpenRequest(msg); err == nil {
			if len(key) != len(msg)-openRequestSize || key == "" || off != int64(binary.BigEndian.Uint64(msg[1:])) || length != int64(binary.BigEndian.Uint64(msg[9:])) {
				t.Fatalf("request %x decoded as %q %d %d", msg, key, off, length)
			}
		}
		if key, size, ifAbsent, err := parseCreateRequest(msg); err == nil {
			flags := binary.BigEndian.Uint64(msg[9:])
			if len(key) != len(msg)-createRequestSize || key == "" || size != int64(binary.BigEndian.Uint64(msg[1:])) || ifAbsent != (flags == 1) || flags > 1 {
				t.Fatalf("create request %x decoded as %q %d %v", msg, key, size, ifAbsent)
			}
		}
		// Without a descriptor: a success only where none belongs (a
		// commit's outcome), and then it reads back as encoded.
		if r, err := parseOpenReply(msg, nil, true); err == nil && r.code == 0 {
			t.Fatalf("reply %x without a descriptor accepted as a success with one", msg)
		}
		r, err := parseOpenReply(msg, nil, false)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeReply(r), msg) {
			t.Fatalf("reply %x decoded as %+v, which encodes as %x", msg, r, encodeReply(r))
		}
	})
}

func TestTruncateText(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		n    int
		want string
	}{
		{"abc", 5, "abc"},
		{"abcdef", 3, "abc"},
		{"aé", 2, "a"}, // é is two bytes: not cut in half
		{"éé", 3, "é"},
	} {
		if got := truncateText(tt.in, tt.n); got != tt.want {
			t.Errorf("truncateText(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}

// recPut is a FilePut that records what the plugin's plane did with it.
type recPut struct {
	f         *os.File
	commitErr error
	block     bool          // Commit waits for its context
	started   chan struct{} // closed when a blocking Commit starts
	done      chan string   // "commit", "abort" or the commit context's error
	once      chan struct{} // closed at the first of Commit or Abort
}

func newRecPut(t *testing.T) *recPut {
	f, err := os.Create(filepath.Join(t.TempDir(), "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return &recPut{f: f, done: make(chan string, 2), once: make(chan struct{}), started: make(chan struct{})}
}

func (r *recPut) File() *os.File { return r.f }

func (r *recPut) Commit(ctx context.Context) error {
	if r.block {
		close(r.started)
		<-ctx.Done()
		r.done <- "commit context: " + ctx.Err().Error()
		return ctx.Err()
	}
	r.done <- "commit"
	return r.commitErr
}

func (r *recPut) Abort() {
	select {
	case <-r.once:
	default:
		close(r.once)
		r.done <- "abort"
	}
}

type fakeFiles struct{ put *recPut }

func (fakeFiles) getFile(context.Context, string, int64, int64) (io.ReadCloser, int64, error) {
	return nil, 0, ErrNotFound
}

func (f fakeFiles) putFile(context.Context, string, int64, bool) (FilePut, error) { return f.put, nil }

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("injected") }

// The plugin's side of a create request: a commit commits, and its error
// keeps its class; a host whose data fails closes the socket and the Put
// is aborted; a host whose context ends during the commit cancels the
// commit's context.
func TestPutFileSessions(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte("x"), 3<<20+5)
	tests := []struct {
		name   string
		r      io.Reader
		cancel bool // once the plugin's Commit has started
		setup  func(*recPut)
		class  error // nil: success
		plugin string
	}{
		{name: "commit", r: bytes.NewReader(data), plugin: "commit"},
		{name: "commit fails", r: bytes.NewReader(data), setup: func(p *recPut) { p.commitErr = ErrAlreadyExists }, class: ErrAlreadyExists, plugin: "commit"},
		{name: "reader fails", r: io.MultiReader(bytes.NewReader(data[:1<<20]), failingReader{}), class: errors.New("injected"), plugin: "abort"},
		{name: "short", r: bytes.NewReader(data[:100]), class: io.ErrUnexpectedEOF, plugin: "abort"},
		{name: "cancelled while committing", r: bytes.NewReader(data), cancel: true, setup: func(p *recPut) { p.block = true }, class: context.Canceled, plugin: "commit context: context canceled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			hp, child, err := newHostPlane()
			if err != nil {
				t.Fatal(err)
			}
			pp := newPluginPlane(child, testLogger(t), time.Minute, 30*time.Second)
			t.Cleanup(func() {
				_ = hp.close()
				_ = pp.close()
			})
			put := newRecPut(t)
			if tt.setup != nil {
				tt.setup(put)
			}
			pp.serveFiles(fakeFiles{put: put})
			c := &client{plane: hp, filePut: true}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if tt.cancel {
				go func() {
					<-put.started
					cancel()
				}()
			}
			err = c.putFile(ctx, "put", "k", tt.r, int64(len(data)))
			switch {
			case tt.class == nil && err != nil:
				t.Fatalf("putFile: %v", err)
			case tt.class != nil && err == nil:
				t.Fatal("putFile succeeded")
			case tt.class != nil && !errors.Is(err, tt.class) && !strings.Contains(err.Error(), tt.class.Error()):
				t.Fatalf("putFile: %v, want %v", err, tt.class)
			}
			select {
			case got := <-put.done:
				if got != tt.plugin {
					t.Fatalf("plugin: %s, want %s", got, tt.plugin)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("plugin: nothing, want %s", tt.plugin)
			}
			if tt.name == "commit" {
				got, err := os.ReadFile(put.f.Name())
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("file holds %d bytes, %v", len(got), err)
				}
			}
		})
	}
}

// scriptedReader returns its reads in turn.
type scriptedReader []struct {
	data string
	err  error
}

func (s *scriptedReader) Read(p []byte) (int, error) {
	if len(*s) == 0 {
		return 0, io.EOF
	}
	r := (*s)[0]
	*s = (*s)[1:]
	return copy(p, r.data), r.err
}

// TestResumingReaderPartialTransient: a read that returns data together
// with a transient error delivers the data, and the error does not reach
// the caller (the reader resumes). Before, a Get's reader passed such an
// error on, and a restore failed although its doc promised callers see
// none.
func TestResumingReaderPartialTransient(t *testing.T) {
	rc := &scriptedReader{{"abc", Transient(errors.New("stale file handle"))}, {"def", io.EOF}}
	g := &resumingReader{rc: io.NopCloser(rc), key: "k", remaining: 6, resumes: 3}
	got, err := io.ReadAll(g)
	if err != nil || string(got) != "abcdef" {
		t.Fatalf("ReadAll = %q, %v; want abcdef and no error", got, err)
	}
}
