package attach

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/blockdev/fuse"
	"github.com/strata-block/strata/snapshot"
)

// The serve child: this test binary re-executed with STRATA_ATTACH_SERVE
// set runs a small server instead of the tests, as the agent will (issue
// 5): it opens a store, creates or opens one volume, optionally snapshots
// it, cleans what a killed predecessor left (CleanStale, then fuse.Mount),
// mounts FUSE, adds the volume and its snapshots, optionally attaches a
// loop device and mounts ext4 on it, prints one "READY <loop device or ->"
// line on stdout, and on SIGTERM or SIGINT shuts down cleanly: unmount
// ext4, detach the loop device, close the FUSE mount (waiting up to
// STRATA_SERVE_GRACE for open files), close the volume and the store,
// print "CLEAN" and exit 0. The SIGTERM/SIGKILL tests and
// benchmarks/fuse.sh use it.
//
// Environment:
//
//	STRATA_ATTACH_SERVE=1    run the server
//	STRATA_SERVE_STORE       store directory
//	STRATA_SERVE_MNT         FUSE mount directory
//	STRATA_SERVE_VOLUME      volume name (default vol)
//	STRATA_SERVE_SIZE        volume size in bytes when creating it
//	STRATA_SERVE_SNAPSHOT    take this snapshot at start
//	STRATA_SERVE_LOOP=1      attach a loop device over the volume's file
//	STRATA_SERVE_EXT4        mkfs.ext4 the loop device and mount it here
//	STRATA_SERVE_GRACE       how long Close waits for open files (default 10s)
//	STRATA_SERVE_CPUPROFILE  write a CPU profile of the whole run here
//	STRATA_SERVE_MAXBG, STRATA_SERVE_PAGECACHE=1, STRATA_SERVE_BUFFERED=1
//	                         override the FUSE and loop options (measurements)
const serveEnv = "STRATA_ATTACH_SERVE"

func serveMain() int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := serve(log); err != nil {
		log.Error("serve", "err", err)
		fmt.Println("ERROR", err)
		return 1
	}
	fmt.Println("CLEAN")
	return 0
}

func serve(log *slog.Logger) (err error) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	env := os.Getenv
	if p := env("STRATA_SERVE_CPUPROFILE"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			err = errors.Join(err, f.Close())
		}()
	}
	name := env("STRATA_SERVE_VOLUME")
	if name == "" {
		name = "vol"
	}
	grace := 10 * time.Second
	if g := env("STRATA_SERVE_GRACE"); g != "" {
		if grace, err = time.ParseDuration(g); err != nil {
			return fmt.Errorf("STRATA_SERVE_GRACE: %w", err)
		}
	}
	mnt := env("STRATA_SERVE_MNT")
	var cleanups []func() error // run in reverse
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			err = errors.Join(err, cleanups[i]())
		}
	}()

	// The store's flock makes this the only server of the store; what
	// remains of a killed one is cleaned before mounting.
	s, err := snapshot.OpenStore(env("STRATA_SERVE_STORE"), &snapshot.Options{Logger: log})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, s.Close)
	if c, err := CleanStale(ctx, mnt, log); err != nil {
		return err
	} else if len(c.Detached)+len(c.Unmounted) > 0 {
		log.Warn("cleaned after a killed server", "detached", c.Detached, "unmounted", c.Unmounted)
	}
	v, err := s.Open(ctx, name)
	if errors.Is(err, snapshot.ErrNotFound) {
		size, perr := strconv.ParseInt(env("STRATA_SERVE_SIZE"), 10, 64)
		if perr != nil {
			return fmt.Errorf("STRATA_SERVE_SIZE: %w", perr)
		}
		v, err = s.Create(ctx, name, size)
	}
	if err != nil {
		return err
	}
	cleanups = append(cleanups, v.Close)
	if snap := env("STRATA_SERVE_SNAPSHOT"); snap != "" {
		if err := v.Snapshot(ctx, snap); err != nil {
			return err
		}
	}
	maxbg, _ := strconv.Atoi(env("STRATA_SERVE_MAXBG"))
	f, err := fuse.Mount(ctx, mnt, &fuse.Options{Logger: log, MaxBackground: maxbg, PageCache: env("STRATA_SERVE_PAGECACHE") == "1"})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() error {
		cctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		return f.Close(cctx)
	})
	if err := f.Add(blockdev.FromSnapshot(v)); err != nil {
		return err
	}
	for _, si := range v.Snapshots() {
		vw, err := v.OpenSnapshot(ctx, si.Name)
		if err != nil {
			return err
		}
		// Closed after the mount (cleanups run in reverse).
		cleanups = append(cleanups[:1], append([]func() error{vw.Close}, cleanups[1:]...)...)
		if err := f.Add(blockdev.FromView(vw)); err != nil {
			return err
		}
	}
	dev := "-"
	if env("STRATA_SERVE_LOOP") == "1" {
		l, err := AttachLoop(ctx, f.Path(name), &LoopOptions{Logger: log, Buffered: env("STRATA_SERVE_BUFFERED") == "1"})
		if err != nil {
			return err
		}
		cleanups = append(cleanups, func() error { return l.Detach(context.Background()) })
		dev = l.Path
		if dir := env("STRATA_SERVE_EXT4"); dir != "" {
			if err := Mkfs(ctx, dev, Ext4); err != nil {
				return err
			}
			if err := Mount(ctx, dev, dir, Ext4, nil); err != nil {
				return err
			}
			cleanups = append(cleanups, func() error { return Unmount(context.Background(), dir) })
		}
	}
	fmt.Println("READY", dev)
	<-ctx.Done()
	log.Info("shutting down", "cause", context.Cause(ctx))
	return nil
}

// child is a running serve child.
type child struct {
	cmd    *exec.Cmd
	lines  chan string // stdout lines; closed at EOF
	stderr *lockedBuffer
}

// lockedBuffer is a strings.Builder safe to read while the child writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startServe runs the serve child with env added and waits for READY; it
// returns the child and the loop device it printed ("-" for none). A
// child still running at cleanup is killed.
func startServe(t *testing.T, env ...string) (*child, string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(append(os.Environ(), serveEnv+"=1"), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, lines: make(chan string, 16), stderr: &lockedBuffer{}}
	cmd.Stderr = c.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("serve child stderr:\n%s", c.stderr.String())
		}
	})
	line, ok := <-c.lines
	dev, found := strings.CutPrefix(line, "READY ")
	if !ok || !found {
		_ = cmd.Wait()
		t.Fatalf("serve child did not get ready: %q\nstderr:\n%s", line, c.stderr.String())
	}
	return c, dev
}

// wait waits for the child to exit and returns its remaining stdout.
func (c *child) wait() ([]string, error) {
	var rest []string
	for l := range c.lines {
		rest = append(rest, l)
	}
	return rest, c.cmd.Wait()
}
