package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/strata-block/strata/backupd/service"
	"github.com/strata-block/strata/backupd/targets"
	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/plugins"
)

// RestoreOptions select a system restore.
type RestoreOptions struct {
	ID string `json:"id"`
	// FromURL, with FromCredentials, reads the manifest from a target
	// this host does not know (a wiped host).
	FromURL         string `json:"from_url,omitempty"`
	FromCredentials string `json:"from_credentials,omitempty"`
	// Credentials maps a target name to its credentials file, for the
	// targets the restore registers.
	Credentials map[string]string `json:"credentials,omitempty"`
	// Force detaches (and unmounts) an attached volume to restore it;
	// otherwise an attached volume is refused.
	Force bool `json:"force,omitempty"`
	// Volumes restricts the restore to these volume names (all if empty).
	Volumes []string `json:"volumes,omitempty"`
}

// RestoreReport is a system restore's outcome, per volume.
type RestoreReport struct {
	ID           string   `json:"id"`
	Source       string   `json:"source"` // the target the manifest came from
	TargetsAdded []string `json:"targets_added,omitempty"`
	// TargetsFailed are targets of the system backup that no restored
	// volume needs and that could not be registered (each with why).
	TargetsFailed  []string       `json:"targets_failed,omitempty"`
	Volumes        []VolumeResult `json:"volumes"`
	Failed         int            `json:"failed"`
	AlreadyPresent int            `json:"skipped"`
}

// Restore restores system backup opts.ID: targets first, then every
// volume from exactly the backup its manifest names, each digest checked.
// A volume restored by an earlier run of the same restore that still
// exists and still holds that backup's data is skipped; a failed volume
// does not stop the others.
func (c *Coordinator) Restore(ctx context.Context, opts RestoreOptions, progress func(Event)) (*RestoreReport, error) {
	if progress == nil {
		progress = func(Event) {}
	}
	if !validID(opts.ID) {
		return nil, fmt.Errorf("system backup id %q: %w", opts.ID, ErrInvalid)
	}
	for name, f := range opts.Credentials {
		if !blockdev.ValidName(name) || f == "" {
			return nil, fmt.Errorf("credentials %q=%q: want NAME=FILE: %w", name, f, ErrInvalid)
		}
	}
	if err := c.lock(ctx, "system restore of "+opts.ID); err != nil {
		return nil, err
	}
	defer c.unlock()
	m, source, err := c.locate(ctx, opts)
	if err != nil {
		return nil, err
	}
	for _, v := range opts.Volumes {
		if !slices.ContainsFunc(m.Volumes, func(b VolumeBackup) bool { return b.Volume == v }) {
			return nil, fmt.Errorf("system backup %s has no volume %q: %w", m.ID, v, ErrNotFound)
		}
	}
	selected := func(vb VolumeBackup) bool { return len(opts.Volumes) == 0 || slices.Contains(opts.Volumes, vb.Volume) }
	rep := &RestoreReport{ID: m.ID, Source: source}
	progress(Event{Event: "accepted", System: manifestSummary(m, []string{source})})
	c.log.Info("system restore", "system", m.ID, "source", source, "volumes", len(m.Volumes))

	// Targets: every target the manifest names must exist, with the same
	// URL, on the coordinator and on every agent that restores from it.
	// A target no selected volume needs is registered when possible; a
	// failure there is only logged.
	var needed, extra []TargetConfig
	for _, t := range m.Config.Targets {
		if slices.ContainsFunc(m.Volumes, func(vb VolumeBackup) bool { return selected(vb) && vb.Target == t.Name }) {
			needed = append(needed, t)
		} else {
			extra = append(extra, t)
		}
	}
	// The manifest's default target goes first, even when no selected
	// volume needs it: on an agent without targets the first one
	// registered becomes the default (and a later one never does).
	if i := slices.IndexFunc(extra, func(t TargetConfig) bool { return t.Default }); i >= 0 {
		def := extra[i]
		extra = append([]TargetConfig{def}, slices.Delete(extra, i, i+1)...)
		if more, err := c.ensureTargets(ctx, LocalAgent, extra[:1], restoreCreds(opts, source)); err != nil {
			c.log.Warn("the system backup's default target, which no restored volume needs, was not registered", "target", extra[0].Name, "err", err)
			rep.TargetsFailed = append(rep.TargetsFailed, fmt.Sprintf("%s: %v", extra[0].Name, err))
		} else {
			rep.TargetsAdded = append(rep.TargetsAdded, more...)
		}
		extra = extra[1:]
	}
	added, err := c.ensureTargets(ctx, LocalAgent, needed, restoreCreds(opts, source))
	if err != nil {
		return nil, fmt.Errorf("%w (supply credentials with --credentials NAME=FILE)", err)
	}
	rep.TargetsAdded = append(rep.TargetsAdded, added...)
	for _, t := range extra {
		more, err := c.ensureTargets(ctx, LocalAgent, []TargetConfig{t}, restoreCreds(opts, source))
		if err != nil {
			c.log.Warn("a target of the system backup that no restored volume needs was not registered", "target", t.Name, "err", err)
			rep.TargetsFailed = append(rep.TargetsFailed, fmt.Sprintf("%s: %v", t.Name, err))
			continue
		}
		rep.TargetsAdded = append(rep.TargetsAdded, more...)
	}

	done, err := c.st.restoreDone(m.ID)
	if err != nil {
		return nil, err
	}
	for _, vb := range m.Volumes {
		if !selected(vb) {
			continue
		}
		res := c.restoreVolume(ctx, m, vb, opts, done, progress)
		switch res.Status {
		case "failed":
			rep.Failed++
		case "skipped":
			rep.AlreadyPresent++
		}
		rep.Volumes = append(rep.Volumes, *res)
		progress(Event{Event: "volume", Result: res})
		if ctx.Err() != nil {
			return rep, context.Cause(ctx)
		}
	}
	if rep.Failed > 0 {
		return rep, fmt.Errorf("system restore %s: %d of %d volumes failed", m.ID, rep.Failed, len(rep.Volumes))
	}
	// Done: the record only served resuming this restore.
	if err := c.st.clearRestore(m.ID); err != nil {
		c.log.Warn("forget a finished restore", "system", m.ID, "err", err)
	}
	return rep, nil
}

// locate finds the manifest: on the --from URL, else on any registered
// target.
func (c *Coordinator) locate(ctx context.Context, opts RestoreOptions) (*Manifest, string, error) {
	if opts.FromURL == "" {
		m, where, err := c.find(ctx, opts.ID)
		if errors.Is(err, ErrNotFound) {
			err = fmt.Errorf("%w (on a host that knows none of its targets, restore with --from URL [--credentials FILE] [--credentials NAME=FILE])", err)
		}
		return m, where, err
	}
	tg, err := c.opts.Targets.OpenUnregistered(ctx, targets.Target{Name: "restore-source", URL: opts.FromURL, CredentialsFile: opts.FromCredentials})
	if err != nil {
		return nil, "", fmt.Errorf("--from %s: %w", plugins.RedactURL(opts.FromURL), err)
	}
	defer tg.Close()
	m, err := c.loadManifestFrom(ctx, tg, opts.FromURL, opts.ID)
	if err != nil {
		return nil, "", err
	}
	return m, opts.FromURL, nil
}

// restoreCreds returns the credentials file of a target a restore
// registers: --credentials NAME=FILE, or --from's for the target the
// manifest came from.
func restoreCreds(opts RestoreOptions, source string) func(TargetConfig) string {
	return func(t TargetConfig) string {
		if f := opts.Credentials[t.Name]; f != "" {
			return f
		}
		if t.URL == source {
			return opts.FromCredentials
		}
		return ""
	}
}

// ensureTargets registers on an agent the targets ts it lacks, with the
// credentials files creds names; a target registered under the same name
// with another URL is an error. A default target in ts becomes the
// agent's default only where it has none.
func (c *Coordinator) ensureTargets(ctx context.Context, agentName string, ts []TargetConfig, creds func(TargetConfig) string) ([]string, error) {
	cl, err := c.client(agentName)
	if err != nil {
		return nil, err
	}
	var have []targets.Target
	if err := cl.Do(ctx, http.MethodGet, "/v1/targets", nil, &have); err != nil {
		return nil, fmt.Errorf("agent %q: list targets: %w", agentName, err)
	}
	hasDefault := slices.ContainsFunc(have, func(t targets.Target) bool { return t.Default })
	// The default first: an agent without targets makes the first one it
	// registers its default, whatever the request says.
	ts = slices.Clone(ts)
	slices.SortStableFunc(ts, func(a, b TargetConfig) int {
		switch {
		case a.Default == b.Default:
			return 0
		case a.Default:
			return -1
		}
		return 1
	})
	var added []string
	for _, t := range ts {
		i := slices.IndexFunc(have, func(h targets.Target) bool { return h.Name == t.Name })
		if i >= 0 {
			if have[i].URL != t.URL {
				return nil, fmt.Errorf("target %q is registered on agent %q with URL %s, the system uses %s: remove or rename it first: %w", t.Name, agentName, have[i].URL, t.URL, ErrExists)
			}
			continue
		}
		req := targets.AddRequest{Name: t.Name, URL: t.URL, CredentialsFile: creds(t), Default: t.Default && !hasDefault}
		if err := cl.Do(ctx, http.MethodPost, "/v1/targets", req, nil); err != nil {
			return nil, fmt.Errorf("register target %q (%s) on agent %q: %w", t.Name, t.URL, agentName, err)
		}
		hasDefault = hasDefault || req.Default
		added = append(added, t.Name)
		c.log.Info("target registered on an agent", "target", t.Name, "agent", agentName, "default", req.Default)
	}
	return added, nil
}

func (c *Coordinator) restoreVolume(ctx context.Context, m *Manifest, vb VolumeBackup, opts RestoreOptions, done map[string]string, progress func(Event)) *VolumeResult {
	res := &VolumeResult{Agent: vb.Agent, Volume: vb.Volume, Target: vb.Target, BackupID: vb.BackupID, Digest: vb.Digest}
	fail := func(err error) *VolumeResult {
		res.Status, res.Error = "failed", err.Error()
		c.log.Warn("volume restore failed", "system", m.ID, "agent", vb.Agent, "volume", vb.Volume, "err", err)
		return res
	}
	cl, err := c.client(vb.Agent)
	if err != nil {
		return fail(err)
	}
	if vb.Agent != LocalAgent {
		if _, err := c.ensureTargets(ctx, vb.Agent, m.Config.Targets, restoreCreds(opts, "")); err != nil {
			return fail(err)
		}
	}
	vs, err := cl.Volume(ctx, vb.Volume)
	exists := err == nil
	if err != nil && !errors.Is(err, blockdev.ErrNotFound) {
		return fail(err)
	}
	if exists && done[ackKey(vb.Agent, vb.Volume)] == vb.Digest {
		// An earlier run restored it, but it may have been written, or
		// restored over, since: skip it only if it still holds the
		// backup's data, else restore it again.
		var cr service.CompareResult
		err := cl.Do(ctx, http.MethodPost, "/v1/backups/"+vb.BackupID+"/compare", service.CompareRequest{To: vb.Volume, Target: vb.Target}, &cr)
		switch {
		case err == nil && cr.Identical:
			res.Status = "skipped"
			return res
		case err != nil:
			if ctx.Err() != nil {
				return fail(err)
			}
			c.log.Warn("could not compare a volume an earlier run restored with its backup; restoring it again", "system", m.ID, "volume", vb.Volume, "agent", vb.Agent, "err", err)
		default:
			c.log.Info("a volume an earlier run restored changed since; restoring it again", "system", m.ID, "volume", vb.Volume, "agent", vb.Agent)
		}
	}
	if exists && vs.Attachment != nil {
		if !opts.Force {
			return fail(fmt.Errorf("volume %q is attached at %s: detach it or restore with --force: %w", vb.Volume, vs.Attachment.Device, blockdev.ErrInUse))
		}
		if vs.Attachment.MountPoint != "" {
			if err := cl.Umount(ctx, vb.Volume); err != nil {
				return fail(fmt.Errorf("unmount %s: %w", vb.Volume, err))
			}
		}
		if err := cl.Detach(ctx, vb.Volume); err != nil && !errors.Is(err, blockdev.ErrNotFound) {
			return fail(fmt.Errorf("detach %s: %w", vb.Volume, err))
		}
	}
	ev, err := service.StreamEvents(ctx, cl, "/v1/backups/"+vb.BackupID+"/restore", service.RestoreRequest{To: vb.Volume, Target: vb.Target, Overwrite: true}, func(ev *service.Event, _ []byte) error {
		if ev.Event == "progress" {
			progress(Event{Event: "progress", Agent: vb.Agent, Progress: ev.Progress})
		}
		return nil
	})
	if err != nil {
		return fail(err)
	}
	rr := ev.Restore
	if rr == nil {
		return fail(errors.New("the restore's answer ended without a result"))
	}
	if rr.Digest != vb.Digest {
		return fail(fmt.Errorf("restored digest %s, the system backup names %s: %w", rr.Digest, vb.Digest, plugins.ErrPermanent))
	}
	setting := ""
	for _, v := range m.Config.Volumes {
		if v.Agent == vb.Agent && v.Name == vb.Volume {
			setting = v.TargetSetting
		}
	}
	if _, err := cl.SetVolumeTarget(ctx, vb.Volume, setting); err != nil {
		return fail(fmt.Errorf("set the volume's target to %q: %w", setting, err))
	}
	if err := c.st.markRestored(m.ID, ackKey(vb.Agent, vb.Volume), vb.Digest); err != nil {
		return fail(err)
	}
	res.Status, res.Bytes = "restored", rr.BytesWritten
	return res
}
