package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/strata-block/strata/blockdev/agent"
)

func newVolumeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "volume",
		Short: "Create, list, attach and remove volumes",
	}
	addClientFlags(cmd)
	cmd.AddCommand(
		volumeCreateCmd(), volumeLsCmd(), volumeInfoCmd(), volumeSetCmd(), volumeRmCmd(), volumeGrowCmd(), volumeCloneCmd(),
		volumeAttachCmd(), volumeDetachCmd(), volumeMountCmd(), volumeUmountCmd(),
	)
	return cmd
}

func printVolume(w io.Writer, v agent.VolumeStatus) error {
	fmt.Fprintf(w, "name:      %s\n", v.Name)
	if v.Err != "" {
		fmt.Fprintf(w, "error:     %s\n", v.Err)
		return nil
	}
	fmt.Fprintf(w, "size:      %s (%d bytes)\n", humanSize(v.Size), v.Size)
	fmt.Fprintf(w, "created:   %s\n", v.Created.Format("2006-01-02 15:04:05Z07:00"))
	fmt.Fprintf(w, "target:    %s\n", targetName(v.Target))
	fmt.Fprintf(w, "nbd:       %s\n", v.NBDURI)
	if v.FUSEPath != "" {
		fmt.Fprintf(w, "fuse:      %s\n", v.FUSEPath)
	}
	switch {
	case v.Attachment == nil:
		fmt.Fprintf(w, "attached:  no\n")
	case v.Attachment.MountPoint != "":
		fmt.Fprintf(w, "attached:  %s (%s), mounted on %s (%s)\n", v.Attachment.Device, v.Attachment.Kind, v.Attachment.MountPoint, v.Attachment.FSType)
	default:
		fmt.Fprintf(w, "attached:  %s (%s)\n", v.Attachment.Device, v.Attachment.Kind)
	}
	fmt.Fprintf(w, "layers:    %d\n", v.Depth)
	fmt.Fprintf(w, "snapshots: %d\n", len(v.Snapshots))
	// Aligned whatever the names' length (backup-<time> and sys-<id> are
	// longer than a column of fixed width).
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, s := range v.Snapshots {
		fmt.Fprintf(tw, "  %s\t%s\tsize %s\towns %s\n", s.Name, s.Created.Format("2006-01-02 15:04:05Z07:00"), humanSize(s.Size), humanSize(s.Owned))
	}
	return tw.Flush()
}

// targetName shows a volume's backup target ("default" when unset).
func targetName(t string) string {
	if t == "" {
		return "default"
	}
	return t
}

func volumeCreateCmd() *cobra.Command {
	var size, target string
	cmd := &cobra.Command{
		Use:   "create NAME SIZE [--target TARGET]",
		Short: "Create an empty volume",
		Long: `Create an empty volume of SIZE bytes (4096, 512MiB, 1GiB, 10G, 1.5GiB: a
multiple of 4 KiB; units are binary, K = 1024; a decimal is taken when it
comes to a whole number of bytes; --size SIZE works too). Its backups go to
--target, else to the default target ("strata volume set" changes it later).`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) == 2 && size != "":
				return fmt.Errorf("volume create: size given twice (%s and --size %s)", args[1], size)
			case len(args) == 2:
				size = args[1]
			case size == "":
				return errors.New("volume create: no size: strata volume create NAME SIZE, e.g. 1GiB")
			}
			n, err := parseSize(size)
			if err != nil {
				return err
			}
			v, err := clientFor(cmd).CreateVolume(cmd.Context(), agent.CreateVolumeRequest{Name: args[0], Size: n, Target: target})
			if err != nil {
				return err
			}
			return output(cmd, v, func(w io.Writer) error {
				if v.Target == "" {
					_, err := fmt.Fprintf(w, "created volume %s (%s)\n", v.Name, humanSize(v.Size))
					return err
				}
				_, err := fmt.Fprintf(w, "created volume %s (%s, backed up to target %s)\n", v.Name, humanSize(v.Size), v.Target)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "size, instead of the SIZE argument")
	cmd.Flags().StringVar(&target, "target", "", "backup target of the volume (default: the default target)")
	return cmd
}

func volumeSetCmd() *cobra.Command {
	var (
		target        string
		defaultTarget bool
	)
	cmd := &cobra.Command{
		Use:   "set NAME --target TARGET | --default-target",
		Short: "Change a volume's settings: its backup target",
		Long: `Change a volume's backup target: its next backups go to --target TARGET
(a registered target). --default-target, or --target "", makes them go to
the default target again. Backups already taken stay where they are.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			setTarget := cmd.Flags().Changed("target")
			switch {
			case setTarget && defaultTarget && target != "":
				return fmt.Errorf("volume set: --target %s and --default-target contradict each other", target)
			case !setTarget && !defaultTarget:
				return errors.New("volume set: nothing to set: give --target TARGET or --default-target")
			case defaultTarget:
				target = ""
			}
			v, err := clientFor(cmd).SetVolumeTarget(cmd.Context(), args[0], target)
			if err != nil {
				return err
			}
			return output(cmd, v, func(w io.Writer) error {
				if v.Target == "" {
					_, err := fmt.Fprintf(w, "volume %s: backups go to the default target\n", v.Name)
					return err
				}
				_, err := fmt.Fprintf(w, "volume %s: backups go to target %s\n", v.Name, v.Target)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&target, "target", "", `backup target ("" for the default target)`)
	cmd.Flags().BoolVar(&defaultTarget, "default-target", false, "back up to the default target")
	return cmd
}

func volumeLsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List volumes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			vs, err := clientFor(cmd).Volumes(cmd.Context())
			if err != nil {
				return err
			}
			if vs == nil {
				vs = []agent.VolumeStatus{}
			}
			return output(cmd, vs, func(w io.Writer) error {
				rows := make([][]string, 0, len(vs))
				for _, v := range vs {
					att := "-"
					if v.Attachment != nil {
						att = v.Attachment.Device
						if v.Attachment.MountPoint != "" {
							att += " on " + v.Attachment.MountPoint
						}
					}
					size := humanSize(v.Size)
					if v.Err != "" {
						size, att = "error", v.Err
					}
					rows = append(rows, []string{v.Name, size, strconv.Itoa(len(v.Snapshots)), targetName(v.Target), att})
				}
				return table(w, []string{"NAME", "SIZE", "SNAPSHOTS", "TARGET", "ATTACHED"}, rows)
			})
		},
	}
}

func volumeInfoCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "info NAME",
		Short: "Show a volume: size, NBD URI, FUSE path, snapshots, attachment",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := clientFor(cmd).Volume(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return output(cmd, v, func(w io.Writer) error { return printVolume(w, v) })
		},
	}
}

// done prints a one-line confirmation, or {"ok": true, ...} with --json.
func done(cmd *cobra.Command, msg string, fields map[string]any) error {
	v := map[string]any{"ok": true}
	for k, f := range fields {
		v[k] = f
	}
	return output(cmd, v, func(w io.Writer) error {
		_, err := fmt.Fprintln(w, msg)
		return err
	})
}

func volumeRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a volume (it must not be attached or in use)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := clientFor(cmd).DeleteVolume(cmd.Context(), args[0]); err != nil {
				return err
			}
			return done(cmd, "removed volume "+args[0], map[string]any{"volume": args[0]})
		},
	}
}

func volumeGrowCmd() *cobra.Command {
	var size string
	cmd := &cobra.Command{
		Use:   "grow NAME --size SIZE",
		Short: "Enlarge a volume",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseSize(size)
			if err != nil {
				return err
			}
			v, err := clientFor(cmd).GrowVolume(cmd.Context(), args[0], n)
			if err != nil {
				return err
			}
			return output(cmd, v, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "volume %s is now %s\n", v.Name, humanSize(v.Size))
				return err
			})
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "new size, larger than the current one (as for create: 20GiB, 1.5TiB)")
	_ = cmd.MarkFlagRequired("size")
	return cmd
}

func volumeCloneCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "clone VOL@SNAP NEW",
		Short: "Create a volume from a snapshot, sharing its data",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, snap, ok := strings.Cut(args[0], "@")
			if !ok || src == "" || snap == "" {
				return fmt.Errorf("clone source %q: want VOLUME@SNAPSHOT", args[0])
			}
			v, err := clientFor(cmd).CloneVolume(cmd.Context(), src, snap, args[1])
			if err != nil {
				return err
			}
			return output(cmd, v, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "created volume %s from %s\n", v.Name, args[0])
				return err
			})
		},
	}
}

func volumeAttachCmd() *cobra.Command {
	var useNBD bool
	cmd := &cobra.Command{
		Use:   "attach NAME",
		Short: "Attach a volume (or VOL@SNAP, read-only) as a host block device and print it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			at, err := clientFor(cmd).Attach(cmd.Context(), args[0], useNBD)
			if err != nil {
				return err
			}
			return output(cmd, at, func(w io.Writer) error {
				_, err := fmt.Fprintln(w, at.Device)
				return err
			})
		},
	}
	cmd.Flags().BoolVar(&useNBD, "nbd", false, "use a kernel NBD device (/dev/nbdN) instead of a loop device; needs nbd.ko")
	return cmd
}

func volumeDetachCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "detach NAME",
		Short: "Detach a volume's host device (unmounting it first if strata mounted it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := clientFor(cmd).Detach(cmd.Context(), args[0]); err != nil {
				return err
			}
			return done(cmd, "detached "+args[0], map[string]any{"volume": args[0]})
		},
	}
}

func volumeMountCmd() *cobra.Command {
	var mkfs string
	cmd := &cobra.Command{
		Use:   "mount NAME DIR",
		Short: "Attach a volume if needed and mount its filesystem on DIR",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(args[1])
			if err != nil {
				return err
			}
			at, err := clientFor(cmd).Mount(cmd.Context(), args[0], dir, mkfs)
			if err != nil {
				return err
			}
			return output(cmd, at, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "mounted %s (%s, %s) on %s\n", args[0], at.Device, at.FSType, at.MountPoint)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&mkfs, "mkfs", "", "format the volume first: ext4 or xfs (destroys its content)")
	return cmd
}

func volumeUmountCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "umount NAME",
		Short: "Unmount a volume strata mounted (it stays attached)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := clientFor(cmd).Umount(cmd.Context(), args[0]); err != nil {
				return err
			}
			return done(cmd, "unmounted "+args[0], map[string]any{"volume": args[0]})
		},
	}
}
