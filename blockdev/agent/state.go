package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/strata-block/strata/internal/atomicfile"
)

// stateFile is the agent's persisted state: which volumes are attached and
// mounted, so a restart brings them back, and each volume's settings (its
// backup target). It is rewritten atomically (temp file, fsync, rename,
// fsync dir) on every change; a change that cannot be saved is not made.
type stateFile struct {
	path string
	mu   sync.Mutex
	st   persisted
}

// persisted is the state file's content.
//
// Version history: 1 holds the attachments; 2 adds the per-volume
// settings. Version 1 files are read as version 2 without settings and
// rewritten as version 2 at the next change.
type persisted struct {
	Version     int                    `json:"version"`
	Attachments map[string]*Attachment `json:"attachments"`
	// Volumes holds each volume's settings; a volume at the defaults has
	// no entry.
	Volumes map[string]*volumeSettings `json:"volumes,omitempty"`
}

// volumeSettings are the settings of one volume.
type volumeSettings struct {
	// Target is the backup target; "" means the default target.
	Target string `json:"target,omitempty"`
}

const stateVersion = 2

func openState(path string) (*stateFile, error) {
	s := &stateFile{path: path, st: persisted{Version: stateVersion, Attachments: map[string]*Attachment{}, Volumes: map[string]*volumeSettings{}}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("agent state %s: %w", path, err)
	}
	var p persisted
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("agent state %s: %w (move it away to start without attachments and volume settings)", path, err)
	}
	if p.Version < 1 || p.Version > stateVersion {
		return nil, fmt.Errorf("agent state %s: version %d, this build reads 1 to %d", path, p.Version, stateVersion)
	}
	p.Version = stateVersion
	if p.Attachments == nil {
		p.Attachments = map[string]*Attachment{}
	}
	if p.Volumes == nil {
		p.Volumes = map[string]*volumeSettings{}
	}
	for name, at := range p.Attachments {
		if at == nil {
			delete(p.Attachments, name)
		}
	}
	for name, vs := range p.Volumes {
		if vs == nil || *vs == (volumeSettings{}) {
			delete(p.Volumes, name)
		}
	}
	s.st = p
	return s, nil
}

func (s *stateFile) get(name string) (Attachment, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.st.Attachments[name]
	if !ok {
		return Attachment{}, false
	}
	return *at, true
}

func (s *stateFile) all() map[string]Attachment {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]Attachment, len(s.st.Attachments))
	for k, v := range s.st.Attachments {
		out[k] = *v
	}
	return out
}

// set records name's attachment (nil removes it) and saves the state.
func (s *stateFile) set(name string, at *Attachment) error {
	return s.update(func(p *persisted) {
		if at == nil {
			delete(p.Attachments, name)
			return
		}
		c := *at
		p.Attachments[name] = &c
	})
}

// settings returns volume name's settings (zero: the defaults).
func (s *stateFile) settings(name string) volumeSettings {
	s.mu.Lock()
	defer s.mu.Unlock()
	if vs, ok := s.st.Volumes[name]; ok {
		return *vs
	}
	return volumeSettings{}
}

// setSettings records volume name's settings (the zero value removes its
// entry) and saves the state.
func (s *stateFile) setSettings(name string, vs volumeSettings) error {
	return s.update(func(p *persisted) {
		if vs == (volumeSettings{}) {
			delete(p.Volumes, name)
			return
		}
		p.Volumes[name] = &vs
	})
}

// keepSettings drops the settings of every volume keep reports false for
// (volumes deleted while the agent was not running to forget them).
func (s *stateFile) keepSettings(keep func(name string) bool) error {
	s.mu.Lock()
	stale := false
	for name := range s.st.Volumes {
		stale = stale || !keep(name)
	}
	s.mu.Unlock()
	if !stale {
		return nil
	}
	return s.update(func(p *persisted) {
		maps.DeleteFunc(p.Volumes, func(name string, _ *volumeSettings) bool { return !keep(name) })
	})
}

// update applies fn to a copy of the state, saves the copy and only then
// makes it the state: a failed save changes nothing.
func (s *stateFile) update(fn func(p *persisted)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := persisted{Version: stateVersion, Attachments: maps.Clone(s.st.Attachments), Volumes: maps.Clone(s.st.Volumes)}
	fn(&p)
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(s.path, b); err != nil {
		return fmt.Errorf("save agent state: %w", err)
	}
	s.st = p
	return nil
}

func umask(m int) int { return unix.Umask(m) }
