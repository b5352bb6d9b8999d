package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"

	"github.com/strata-block/strata/blockdev"
)

// Client talks to an agent's control API over its unix socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the agent listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// APIError is an error the agent answered with. errors.Is matches it
// against the blockdev errors its code stands for.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string { return e.Message }

// Is maps the error code back to the blockdev sentinel.
func (e *APIError) Is(target error) bool {
	for _, ec := range errorCodes {
		if ec.code == e.Code && ec.err == target {
			return true
		}
	}
	return false
}

// Do sends a request with body in (JSON, nil for none) to path and
// decodes the answer into out (nil to discard it). It serves the routes of
// API extensions.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	return c.do(ctx, method, path, in, out)
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://strata"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) {
			return fmt.Errorf("cannot reach the strata server at %s (is `strata server` running with this --data-dir?): %w", c.socket, err)
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var eb ErrorBody
		if err := json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(&eb); err != nil || eb.Error == "" {
			return &APIError{Status: resp.StatusCode, Code: "internal", Message: fmt.Sprintf("server answered %s", resp.Status)}
		}
		return &APIError{Status: resp.StatusCode, Code: eb.Code, Message: eb.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode server answer to %s %s: %w", method, path, err)
	}
	return nil
}

func esc(s string) string { return url.PathEscape(s) }

// Status reports the agent's state.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	return st, c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
}

// Volumes lists the volumes.
func (c *Client) Volumes(ctx context.Context) ([]VolumeStatus, error) {
	var vs []VolumeStatus
	return vs, c.do(ctx, http.MethodGet, "/v1/volumes", nil, &vs)
}

// Volume describes one volume.
func (c *Client) Volume(ctx context.Context, name string) (VolumeStatus, error) {
	var vs VolumeStatus
	return vs, c.do(ctx, http.MethodGet, "/v1/volumes/"+esc(name), nil, &vs)
}

// CreateVolume creates a volume.
func (c *Client) CreateVolume(ctx context.Context, name string, size int64) (VolumeStatus, error) {
	var vs VolumeStatus
	return vs, c.do(ctx, http.MethodPost, "/v1/volumes", CreateVolumeRequest{Name: name, Size: size}, &vs)
}

// DeleteVolume deletes a volume.
func (c *Client) DeleteVolume(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/volumes/"+esc(name), nil, nil)
}

// GrowVolume enlarges a volume.
func (c *Client) GrowVolume(ctx context.Context, name string, size int64) (VolumeStatus, error) {
	var vs VolumeStatus
	return vs, c.do(ctx, http.MethodPost, "/v1/volumes/"+esc(name)+"/grow", SizeRequest{Size: size}, &vs)
}

// CloneVolume makes volume dst from snapshot snap of src.
func (c *Client) CloneVolume(ctx context.Context, src, snap, dst string) (VolumeStatus, error) {
	var vs VolumeStatus
	return vs, c.do(ctx, http.MethodPost, "/v1/volumes/"+esc(src)+"/clone", CloneRequest{Snapshot: snap, Name: dst}, &vs)
}

// Snapshots lists a volume's snapshots, oldest first.
func (c *Client) Snapshots(ctx context.Context, vol string) ([]blockdev.SnapshotInfo, error) {
	var ss []blockdev.SnapshotInfo
	return ss, c.do(ctx, http.MethodGet, "/v1/volumes/"+esc(vol)+"/snapshots", nil, &ss)
}

// CreateSnapshot takes a snapshot ("" names it by the time).
func (c *Client) CreateSnapshot(ctx context.Context, vol, snap string) (blockdev.SnapshotInfo, error) {
	var si blockdev.SnapshotInfo
	return si, c.do(ctx, http.MethodPost, "/v1/volumes/"+esc(vol)+"/snapshots", SnapshotRequest{Name: snap}, &si)
}

// DeleteSnapshot deletes a snapshot.
func (c *Client) DeleteSnapshot(ctx context.Context, vol, snap string) error {
	return c.do(ctx, http.MethodDelete, "/v1/volumes/"+esc(vol)+"/snapshots/"+esc(snap), nil, nil)
}

// RevertSnapshot reverts a volume to a snapshot.
func (c *Client) RevertSnapshot(ctx context.Context, vol, snap string) (VolumeStatus, error) {
	var vs VolumeStatus
	return vs, c.do(ctx, http.MethodPost, "/v1/volumes/"+esc(vol)+"/snapshots/"+esc(snap)+"/revert", nil, &vs)
}

// Attach attaches a volume as a host block device.
func (c *Client) Attach(ctx context.Context, name string, useNBD bool) (Attachment, error) {
	var at Attachment
	return at, c.do(ctx, http.MethodPost, "/v1/volumes/"+esc(name)+"/attach", AttachRequest{NBD: useNBD}, &at)
}

// Detach detaches a volume (unmounting it first if the agent mounted it).
func (c *Client) Detach(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/v1/volumes/"+esc(name)+"/detach", nil, nil)
}

// Mount mounts a volume on dir, formatting it first with mkfs if set.
func (c *Client) Mount(ctx context.Context, name, dir, mkfs string) (Attachment, error) {
	var at Attachment
	return at, c.do(ctx, http.MethodPost, "/v1/volumes/"+esc(name)+"/mount", MountRequest{Dir: dir, MkFS: mkfs}, &at)
}

// Umount unmounts a volume the agent mounted; it stays attached.
func (c *Client) Umount(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/v1/volumes/"+esc(name)+"/umount", nil, nil)
}

// Metrics returns the Prometheus exposition text.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://strata/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
