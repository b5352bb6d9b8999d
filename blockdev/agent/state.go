package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/strata-block/strata/internal/atomicfile"
)

// stateFile is the agent's persisted state: which volumes are attached and
// mounted, so a restart brings them back. It is rewritten atomically (temp
// file, fsync, rename, fsync dir) on every change.
type stateFile struct {
	path string
	mu   sync.Mutex
	st   persisted
}

type persisted struct {
	Version     int                    `json:"version"`
	Attachments map[string]*Attachment `json:"attachments"`
}

const stateVersion = 1

func openState(path string) (*stateFile, error) {
	s := &stateFile{path: path, st: persisted{Version: stateVersion, Attachments: map[string]*Attachment{}}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("agent state %s: %w", path, err)
	}
	var p persisted
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("agent state %s: %w (move it away to start without attachments)", path, err)
	}
	if p.Version != stateVersion {
		return nil, fmt.Errorf("agent state %s: version %d, this build reads %d", path, p.Version, stateVersion)
	}
	if p.Attachments == nil {
		p.Attachments = map[string]*Attachment{}
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
	s.mu.Lock()
	defer s.mu.Unlock()
	if at == nil {
		delete(s.st.Attachments, name)
	} else {
		c := *at
		s.st.Attachments[name] = &c
	}
	b, err := json.MarshalIndent(s.st, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(s.path, b); err != nil {
		return fmt.Errorf("save agent state: %w", err)
	}
	return nil
}

func umask(m int) int { return unix.Umask(m) }
