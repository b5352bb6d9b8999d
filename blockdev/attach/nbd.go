package attach

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/pojntfx/go-nbd/pkg/client"
	"golang.org/x/sys/unix"
)

// KernelNBD reports whether the kernel has an NBD driver, loading nbd.ko
// with modprobe when it is not loaded. The error says why not: no
// /sys/module/nbd and modprobe's own message.
func KernelNBD(ctx context.Context) error {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		return nil
	}
	out, err := exec.CommandContext(ctx, "modprobe", "nbd").CombinedOutput()
	if err != nil {
		return fmt.Errorf("no /sys/module/nbd and modprobe nbd failed: %w: %s: %w",
			err, strings.TrimSpace(string(out)), ErrNoKernelNBD)
	}
	if _, err := os.Stat("/sys/module/nbd"); err != nil {
		return fmt.Errorf("modprobe nbd succeeded but %w: %w", err, ErrNoKernelNBD)
	}
	return nil
}

// NBD is a kernel NBD device (/dev/nbdN) connected to an NBD server
// through go-nbd's client.
type NBD struct {
	// Path is the device node, "/dev/nbdN".
	Path string
	// Export is the export name ("vol" or "vol@snap").
	Export string

	log  *slog.Logger
	dev  *os.File
	conn net.Conn
	done chan error // the client's result once the device is disconnected

	mu       sync.Mutex
	detached bool
	err      error
}

// nbdSetFlags is NBD_SET_FLAGS, _IO(0xab, 10) in linux/nbd.h (go-nbd's
// ioctl package and x/sys do not define it).
const nbdSetFlags = 0xab<<8 | 10

// AttachNBD connects export of the NBD server at network/address ("unix",
// "/run/strata/nbd.sock") to a free /dev/nbdN with 4096-byte blocks.
// flags are the export's transmission flags as the server sends them
// (nbd.ExportFlags for Strata's server): go-nbd's client reads them in
// the negotiation but never gives them to the kernel, which without
// NBD_FLAG_SEND_FLUSH treats the device as write-through and sends no
// FLUSH, so a filesystem's journal commits would be acknowledged from the
// server's page cache and lost with the host. They are set on the device
// before the client connects it, and the kernel applies them when it
// starts the device. AttachNBD fails with ErrNoKernelNBD where the kernel
// has no NBD driver.
func AttachNBD(ctx context.Context, network, address, export string, flags uint16, log *slog.Logger) (*NBD, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := KernelNBD(ctx); err != nil {
		return nil, fmt.Errorf("nbd attach %q: %w", export, err)
	}
	path, dev, err := claimNBD()
	if err != nil {
		return nil, fmt.Errorf("nbd attach %q: %w", export, err)
	}
	// Before NBD_SET_SOCK claims the device, as go-nbd's Connect does it
	// all: an ioctl-mode client of another program claiming the same
	// device between claimNBD's check and our SET_SOCK would run with
	// these flags (our SET_SOCK then fails with EBUSY). Agents attach one
	// at a time (the host's lock), and a netlink-bound device refuses
	// the ioctl.
	if err := unix.IoctlSetInt(int(dev.Fd()), nbdSetFlags, int(flags)); err != nil {
		dev.Close()
		return nil, fmt.Errorf("nbd attach %q: NBD_SET_FLAGS %#x on %s: %w", export, flags, path, err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("nbd attach %q: %w", export, err)
	}
	n := &NBD{Path: path, Export: export, log: log.With("device", path), dev: dev, conn: conn, done: make(chan error, 1)}
	ready := make(chan struct{})
	go func() {
		n.done <- client.Connect(conn, dev, &client.Options{
			ExportName:  export,
			BlockSize:   4096,
			OnConnected: func() { close(ready) },
		})
	}()
	select {
	case <-ready:
	case err := <-n.done:
		conn.Close()
		dev.Close()
		if err == nil {
			err = errors.New("disconnected during negotiation")
		}
		return nil, fmt.Errorf("nbd attach %q to %s: %w", export, path, err)
	case <-ctx.Done():
		_ = client.Disconnect(dev)
		<-n.done
		conn.Close()
		dev.Close()
		return nil, ctx.Err()
	}
	n.log.Info("nbd attached", "export", export, "server", address)
	return n, nil
}

// claimNBD opens the first /dev/nbdN with no connection (no
// /sys/block/nbdN/pid). The kernel refuses a second NBD_SET_SOCK on a
// device in use, so a race with another attach fails rather than sharing.
func claimNBD() (string, *os.File, error) {
	paths, err := filepath.Glob("/sys/block/nbd*")
	if err != nil {
		return "", nil, err
	}
	nums := make([]int, 0, len(paths))
	for _, p := range paths {
		if n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(p), "nbd")); err == nil {
			nums = append(nums, n)
		}
	}
	slices.Sort(nums)
	for _, n := range nums {
		if _, err := os.Stat(fmt.Sprintf("/sys/block/nbd%d/pid", n)); err == nil {
			continue
		}
		path := "/dev/nbd" + strconv.Itoa(n)
		f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		return path, f, nil
	}
	return "", nil, fmt.Errorf("all %d /dev/nbd* devices connected: %w", len(nums), ErrNoFreeDevice)
}

// Detach disconnects the device (NBD_DISCONNECT after the queue drains)
// and waits for the client to return. It fails with ErrBusy while a
// filesystem on the device is mounted. It is idempotent.
func (n *NBD) Detach(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.detached {
		return n.err
	}
	if err := refuseMounted(n.dev); err != nil {
		return fmt.Errorf("nbd detach %s: %w", n.Path, err)
	}
	var errs []error
	if err := client.Disconnect(n.dev); err != nil {
		errs = append(errs, fmt.Errorf("nbd detach %s: %w", n.Path, err))
	}
	select {
	case err := <-n.done:
		if err != nil {
			errs = append(errs, fmt.Errorf("nbd detach %s: client: %w", n.Path, err))
		}
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("nbd detach %s: waiting for the client: %w", n.Path, ctx.Err()))
	}
	n.conn.Close()
	n.dev.Close()
	n.detached, n.err = true, errors.Join(errs...)
	n.log.Info("nbd detached", "export", n.Export)
	return n.err
}
