package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/strata-block/strata/blockdev/agent"
)

// StreamEvents sends in to path (POST) on the agent c and reads the NDJSON
// answer of a long operation (backup, restore, verify). fn, if set, sees
// every event with its raw line, the last one included; an error it
// returns ends the read. StreamEvents returns the final "done" or
// "accepted" event; an "error" event is returned as an *agent.APIError, so
// errors.Is matches the blockdev sentinel of its code. An answer that ends
// without a final event is an error.
func StreamEvents(ctx context.Context, c *agent.Client, path string, in any, fn func(ev *Event, line []byte) error) (*Event, error) {
	var final *Event
	errEnd := errors.New("final event") // stops the read after done, accepted or error
	var failed error
	err := c.Stream(ctx, http.MethodPost, path, in, func(line []byte) error {
		var ev Event
		if err := json.Unmarshal(line, &ev); err != nil {
			return fmt.Errorf("decode event from %s %s: %q: %w", c.Addr(), path, line, err)
		}
		if fn != nil {
			if err := fn(&ev, line); err != nil {
				return err
			}
		}
		switch ev.Event {
		case "done", "accepted":
			final = &ev
			return errEnd
		case "error":
			failed = agent.NewAPIError(ev.Code, ev.Error)
			return errEnd
		}
		return nil
	})
	switch {
	case failed != nil:
		return nil, failed
	case final != nil:
		return final, nil
	case err != nil && !errors.Is(err, errEnd):
		return nil, err
	}
	return nil, fmt.Errorf("the answer of %s to %s ended before the operation finished (see the server log)", c.Addr(), path)
}

// CreateBackup backs up a volume on the agent c (POST /v1/backups, waiting
// for the result) and returns the committed (or, with Policy
// "if-unchanged", reused) backup. progress, if set, sees every progress
// event.
func CreateBackup(ctx context.Context, c *agent.Client, req CreateRequest, progress func(Event)) (*Backup, error) {
	req.Wait = nil
	ev, err := StreamEvents(ctx, c, "/v1/backups", req, func(ev *Event, _ []byte) error {
		if progress != nil && ev.Event == "progress" {
			progress(*ev)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if ev.Backup == nil {
		return nil, fmt.Errorf("backup of volume %q: the answer of %s has no backup", req.Volume, c.Addr())
	}
	return ev.Backup, nil
}
