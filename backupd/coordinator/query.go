package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/backupd/targets"
	"github.com/strata-block/strata/plugins"
)

func (c *Coordinator) summary(r *Run, m *Manifest) *Summary {
	s := &Summary{ID: r.ID, Token: r.Token, State: r.State, Started: r.Started, Finished: r.Finished, Error: r.Error,
		CopiesPending: r.CopiesPending, Config: r.Config, Known: true}
	if r.Config != nil {
		for _, t := range r.Config.Targets {
			s.Targets = append(s.Targets, t.Name)
		}
	}
	if m != nil {
		s.Volumes = m.Volumes
	} else if mm, err := c.manifestFromRun(r); err == nil && r.State == StateCommitted {
		s.Volumes = mm.Volumes
	}
	return s
}

func manifestSummary(m *Manifest, where []string) *Summary {
	cfg := m.Config
	return &Summary{ID: m.ID, Token: m.Token, State: StateCommitted, Started: m.Started, Finished: m.Committed,
		Volumes: m.Volumes, Targets: where, Config: &cfg}
}

// List returns the system backups the coordinator recorded, plus those
// whose manifests the registered targets hold and it has no record of.
// A target that does not answer is skipped with a warning.
func (c *Coordinator) List(ctx context.Context) ([]*Summary, error) {
	runs, err := c.st.runs()
	if err != nil {
		return nil, err
	}
	out := make([]*Summary, 0, len(runs))
	known := map[string]bool{}
	for _, r := range runs {
		s := c.summary(r, nil)
		s.Config = nil
		out = append(out, s)
		known[r.ID] = true
	}
	found := map[string][]string{}
	for _, t := range c.opts.Targets.Registry().List() {
		ids, err := c.listManifests(ctx, t.Name)
		if err != nil {
			c.log.Warn("list system manifests", "target", t.Name, "err", err)
			continue
		}
		for _, id := range ids {
			if !known[id] {
				found[id] = append(found[id], t.Name)
			}
		}
	}
	for id, where := range found {
		m, err := c.loadManifest(ctx, where[0], id)
		if err != nil {
			out = append(out, &Summary{ID: id, State: "unreadable", Error: err.Error(), Targets: where})
			continue
		}
		s := manifestSummary(m, where)
		s.Config = nil
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *Summary) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

func (c *Coordinator) listManifests(ctx context.Context, target string) ([]string, error) {
	tg, err := c.opts.Targets.Open(ctx, target)
	if err != nil {
		return nil, err
	}
	defer tg.Close()
	return listManifestIDs(ctx, tg)
}

func listManifestIDs(ctx context.Context, tg plugins.Target) ([]string, error) {
	var ids []string
	for o, err := range tg.List(ctx, manifestPrefix, "") {
		if err != nil {
			return nil, err
		}
		id, ok := strings.CutSuffix(strings.TrimPrefix(o.Key, manifestPrefix), ".json")
		if ok && validID(id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// Info describes system backup id: the coordinator's record, with the
// manifest when it is committed; or, without a record, the manifest found
// on a registered target.
func (c *Coordinator) Info(ctx context.Context, id string) (*Summary, error) {
	if !validID(id) {
		return nil, fmt.Errorf("system backup id %q: %w", id, ErrInvalid)
	}
	r, err := c.st.run(id)
	if err == nil {
		var m *Manifest
		if r.State == StateCommitted {
			if m, err = c.loadManifest(ctx, r.Config.DefaultTarget(), id); err != nil {
				return nil, err
			}
		}
		return c.summary(r, m), nil
	}
	if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	m, where, err := c.find(ctx, id)
	if err != nil {
		return nil, err
	}
	return manifestSummary(m, []string{where}), nil
}

// find loads manifest id from the first registered target that holds a
// good copy (the default first). A damaged copy is reported when no good
// one exists.
func (c *Coordinator) find(ctx context.Context, id string) (*Manifest, string, error) {
	ts := c.opts.Targets.Registry().List()
	slices.SortStableFunc(ts, func(a, b targets.Target) int {
		if a.Default != b.Default {
			if a.Default {
				return -1
			}
			return 1
		}
		return 0
	})
	var firstErr error
	for _, t := range ts {
		m, err := c.loadManifest(ctx, t.Name, id)
		if err == nil {
			return m, t.Name, nil
		}
		if errors.Is(err, plugins.ErrNotFound) {
			continue
		}
		c.log.Warn("system manifest copy does not load", "system", id, "target", t.Name, "err", err)
		if firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return nil, "", firstErr
	}
	return nil, "", fmt.Errorf("system backup %s: on no registered target: %w", id, ErrNotFound)
}

// Remove deletes system backup id: its manifest from every target, then
// the volume backups it names that no other system manifest names, then
// the coordinator's record.
func (c *Coordinator) Remove(ctx context.Context, id string) error {
	if !validID(id) {
		return fmt.Errorf("system backup id %q: %w", id, ErrInvalid)
	}
	if !c.op.TryLock() {
		return ErrBusy
	}
	defer c.op.Unlock()
	r, rerr := c.st.run(id)
	if rerr == nil && (r.State == StateOpen || r.State == StateCommitting) {
		return fmt.Errorf("system backup %s is %s: %w", id, r.State, ErrBusy)
	}
	m, _, err := c.find(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound) && rerr == nil:
		// A failed run has no manifest: only the record goes.
		return c.st.deleteRun(id)
	case err != nil:
		return err
	}
	for _, t := range m.Config.Targets {
		if err := c.deleteManifest(ctx, t.Name, id); err != nil {
			if _, gerr := c.opts.Targets.Registry().Get(t.Name); gerr != nil {
				continue // a target no longer registered keeps its copy
			}
			return fmt.Errorf("remove system backup %s from target %q: %w", id, t.Name, err)
		}
	}
	for _, v := range m.Volumes {
		if err := c.releaseBackup(ctx, id, v); err != nil {
			return err
		}
	}
	if rerr == nil {
		if err := c.st.deleteRun(id); err != nil {
			return err
		}
	}
	c.log.Info("system backup removed", "system", id)
	return nil
}

// releaseBackup deletes volume backup v unless another system manifest on
// its target names it.
func (c *Coordinator) releaseBackup(ctx context.Context, id string, v VolumeBackup) error {
	tg, err := c.opts.Targets.Open(ctx, v.Target)
	if err != nil {
		return fmt.Errorf("remove system backup %s: volume %q: %w", id, v.Volume, err)
	}
	defer tg.Close()
	ids, err := listManifestIDs(ctx, tg)
	if err != nil {
		return err
	}
	for _, other := range ids {
		if other == id {
			continue
		}
		om, err := loadManifestFrom(ctx, tg, v.Target, other)
		if err != nil {
			// Unsure whether it names the backup: keep the backup.
			c.log.Warn("keeping a volume backup: another system manifest does not load", "backup", v.BackupID, "other", other, "err", err)
			return nil
		}
		if slices.ContainsFunc(om.Volumes, func(o VolumeBackup) bool { return o.BackupID == v.BackupID }) {
			return nil
		}
	}
	err = backupd.Open(tg, &backupd.Options{Logger: c.log}).DeleteHeld(ctx, v.Volume, v.BackupID)
	if err != nil && !errors.Is(err, plugins.ErrNotFound) {
		return fmt.Errorf("remove system backup %s: volume %q backup %s: %w", id, v.Volume, v.BackupID, err)
	}
	return nil
}
