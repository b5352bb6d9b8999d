package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/strata-block/strata/blockdev"
)

// Client talks to an agent's control API: over its unix socket (the
// default, mode 0600), or over TCP with TLS and a bearer token. It is safe
// for concurrent use.
type Client struct {
	addr  string // what Addr reports
	base  string // URL prefix of every request
	token string // bearer token ("" on the unix socket)
	hc    *http.Client
}

// DialOptions configure a TCP connection to an agent; the unix socket
// needs none.
type DialOptions struct {
	// TokenFile holds the bearer token the agent's token_file holds
	// (surrounding white space is ignored). Required for https.
	TokenFile string
	// CAFile, if set, is a PEM file of root certificates to verify the
	// agent's certificate with instead of the system's.
	CAFile string
}

// NewClient returns a client for the agent listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	return &Client{addr: socket, base: "http://strata", hc: &http.Client{Transport: tr}}
}

// Dial returns a client for the agent at addr: a unix socket path, a
// "unix:///abs/path" URL, or "https://host:port" (the agent's api_listen),
// which needs opt.TokenFile. Dial reads the files it is given but does not
// connect: the first request does.
func Dial(addr string, opt DialOptions) (*Client, error) {
	if !strings.Contains(addr, "://") {
		if addr == "" {
			return nil, errors.New("agent address is empty: want a socket path, unix:///path or https://host:port")
		}
		return NewClient(addr), nil
	}
	u, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("agent address %q: %w", addr, err)
	}
	switch u.Scheme {
	case "unix":
		if u.Host != "" || !filepath.IsAbs(u.Path) {
			return nil, fmt.Errorf("agent address %q: want unix:///absolute/path/to/strata.sock", addr)
		}
		return NewClient(u.Path), nil
	case "https":
		if u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("agent address %q: want https://host:port with nothing after the port", addr)
		}
	case "http":
		return nil, fmt.Errorf("agent address %q: the TCP control API is served only over TLS: use https://", addr)
	default:
		return nil, fmt.Errorf("agent address %q: scheme %q: want a socket path, unix:///path or https://host:port", addr, u.Scheme)
	}
	if opt.TokenFile == "" {
		return nil, fmt.Errorf("agent address %s: a TCP agent needs a bearer token: no token file given", addr)
	}
	tok, err := os.ReadFile(opt.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("agent token: %w", err)
	}
	token := strings.TrimSpace(string(tok))
	if token == "" {
		return nil, fmt.Errorf("agent token file %s is empty", opt.TokenFile)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if opt.CAFile != "" {
		pem, err := os.ReadFile(opt.CAFile)
		if err != nil {
			return nil, fmt.Errorf("agent CA: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("agent CA file %s holds no PEM certificate", opt.CAFile)
		}
	}
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true, TLSHandshakeTimeout: 10 * time.Second}
	base := "https://" + u.Host
	return &Client{addr: base, base: base, token: token, hc: &http.Client{Transport: tr}}, nil
}

// Addr is where the client connects: the socket path, or https://host:port.
func (c *Client) Addr() string { return c.addr }

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
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode server answer to %s %s: %w", method, path, err)
	}
	return nil
}

// Stream sends a request with body in (JSON, nil for none) to path and
// reads a newline-delimited JSON answer: fn is called with every non-empty
// line (without its newline; valid only during the call) until the answer
// ends or fn returns an error, which Stream then returns. A non-2xx answer
// is an *APIError and fn is not called. Lines may be up to 64 MiB.
func (c *Client) Stream(ctx context.Context, method, path string, in any, fn func(line []byte) error) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxStreamLine)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		if err := fn(line); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading the answer to %s %s from %s: %w", method, path, c.addr, err)
	}
	return nil
}

// maxStreamLine bounds one line of a streamed answer.
const maxStreamLine = 64 << 20

// send makes a request and returns a 2xx response (the caller closes its
// body), or the agent's error as an *APIError.
func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode request to %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) {
			hint := "is `strata server` running with this --data-dir?"
			if c.token != "" {
				hint = "is the agent's api_listen this address?"
			}
			return nil, fmt.Errorf("cannot reach the strata server at %s (%s): %w", c.addr, hint, err)
		}
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var eb ErrorBody
		if err := json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(&eb); err != nil || eb.Error == "" {
			return nil, &APIError{Status: resp.StatusCode, Code: "internal", Message: fmt.Sprintf("server %s answered %s to %s %s", c.addr, resp.Status, method, path)}
		}
		return nil, &APIError{Status: resp.StatusCode, Code: eb.Code, Message: eb.Error}
	}
	return resp, nil
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

// CreateVolume creates volume req.Name of req.Size bytes, backed up to
// req.Target ("" for the default target).
func (c *Client) CreateVolume(ctx context.Context, req CreateVolumeRequest) (VolumeStatus, error) {
	var vs VolumeStatus
	return vs, c.do(ctx, http.MethodPost, "/v1/volumes", req, &vs)
}

// SetVolumeTarget sets the backup target of volume name; "" resets it to
// the default target. An unregistered target is refused (not found).
func (c *Client) SetVolumeTarget(ctx context.Context, name, target string) (VolumeStatus, error) {
	var vs VolumeStatus
	return vs, c.do(ctx, http.MethodPatch, "/v1/volumes/"+esc(name), UpdateVolumeRequest{Target: &target}, &vs)
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

// Hold holds the writes of volumes (reads go on) until ReleaseHold, or
// until timeout (0: DefaultHoldTimeout; at most MaxHoldTimeout) has passed.
func (c *Client) Hold(ctx context.Context, volumes []string, timeout time.Duration) (HoldInfo, error) {
	var hi HoldInfo
	return hi, c.do(ctx, http.MethodPost, "/v1/holds", HoldRequest{Volumes: volumes, TimeoutMS: timeout.Milliseconds()}, &hi)
}

// SnapshotHold takes snapshot snap ("" names it by the time) of every
// volume of hold id; all or none. An expired or released hold is not found.
func (c *Client) SnapshotHold(ctx context.Context, id, snap string) ([]blockdev.VolumeSnapshot, error) {
	var out []blockdev.VolumeSnapshot
	return out, c.do(ctx, http.MethodPost, "/v1/holds/"+esc(id)+"/snapshots", SnapshotRequest{Name: snap}, &out)
}

// ReleaseHold releases hold id. An expired or released hold is not found.
func (c *Client) ReleaseHold(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/holds/"+esc(id), nil, nil)
}

// SnapshotGroup takes snapshot snap ("" names it by the time) of every
// volume at one crash-consistent instant (hold, snapshot all, release).
func (c *Client) SnapshotGroup(ctx context.Context, snap string, volumes []string) ([]blockdev.VolumeSnapshot, error) {
	var out []blockdev.VolumeSnapshot
	return out, c.do(ctx, http.MethodPost, "/v1/snapshots", GroupSnapshotRequest{Name: snap, Volumes: volumes}, &out)
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
	resp, err := c.send(ctx, http.MethodGet, "/metrics", nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
