// Command benchserve serves one Strata volume over NBD for
// benchmarks/nbd.sh until it is interrupted. It builds the volume in a
// fresh store: the base image's content, then three snapshots, each
// followed by a scattered overlay, so the head sits on three snapshots:
//
//	base → s1, overlay 1 → s2, overlay 2 → s3, overlay 3 → head
//
// Overlay k (1..3) writes 1 MiB of the byte 0x10+k at MiB offsets
// 16j + 5k, j = 0..63; benchmarks/nbd.sh builds the qcow2 chain with the
// same writes.
//
// It lives under blockdev/nbd/internal because it must import snapshot,
// which package nbd itself may not.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/blockdev/nbd"
	"github.com/strata-block/strata/snapshot"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchserve:", err)
		os.Exit(1)
	}
}

func run() error {
	dir := flag.String("dir", "", "empty directory for the snapshot store (required)")
	sock := flag.String("socket", "", "unix socket to listen on (required)")
	base := flag.String("base", "", "raw image whose content is the bottom layer (required)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile here until exit")
	workers := flag.Int("workers", 0, "requests in flight per connection (0: default)")
	flag.Parse()
	if *dir == "" || *sock == "" || *base == "" {
		flag.Usage()
		return errors.New("-dir, -socket and -base are required")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	store, err := snapshot.OpenStore(*dir, nil)
	if err != nil {
		return err
	}
	defer store.Close()
	vol, err := build(ctx, store, *base)
	if err != nil {
		return err
	}
	defer vol.Close()

	exports := nbd.NewMapExports()
	if err := exports.Add(blockdev.FromSnapshot(vol), "benchmark volume"); err != nil {
		return err
	}
	srv, err := nbd.NewServer(exports, nbd.Options{Logger: log, Workers: *workers})
	if err != nil {
		return err
	}
	l, err := nbd.ListenUnix(*sock)
	if err != nil {
		return err
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	log.Info("serving", "socket", *sock, "size", vol.Size(), "depth", vol.Depth())
	if err := srv.Serve(ctx, l); !errors.Is(err, nbd.ErrServerClosed) {
		return err
	}
	return nil
}

// build creates volume "vol" with the base image's content and three
// snapshots below the head.
func build(ctx context.Context, store *snapshot.Store, basePath string) (*snapshot.Volume, error) {
	f, err := os.Open(basePath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	vol, err := store.Create(ctx, "vol", fi.Size())
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 4<<20)
	for off := int64(0); off < fi.Size(); off += int64(len(buf)) {
		n, err := io.ReadFull(f, buf)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("read base image: %w", err)
		}
		if _, err := vol.WriteAt(buf[:n], off); err != nil {
			return nil, err
		}
	}
	for k := 1; k <= 3; k++ {
		if err := vol.Snapshot(ctx, fmt.Sprintf("s%d", k)); err != nil {
			return nil, err
		}
		chunk := bytes.Repeat([]byte{byte(0x10 + k)}, 1<<20)
		for j := range 64 {
			off := int64(16*j+5*k) << 20
			if off+int64(len(chunk)) > vol.Size() {
				continue
			}
			if _, err := vol.WriteAt(chunk, off); err != nil {
				return nil, err
			}
		}
	}
	if err := vol.Flush(); err != nil {
		return nil, err
	}
	return vol, nil
}
