package agent

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/strata-block/strata/blockdev"
)

// API types, shared by the server and Client. docs/API.md documents them.

// VolumeStatus is a volume as the API shows it.
type VolumeStatus struct {
	blockdev.VolumeInfo
	// NBDURI is the volume's NBD export on this agent's unix socket.
	NBDURI string `json:"nbd_uri"`
	// FUSEPath is the volume's file in the FUSE mount ("" without FUSE).
	FUSEPath string `json:"fuse_path,omitempty"`
	// Attachment is set while the volume is attached to a host device.
	Attachment *Attachment `json:"attachment,omitempty"`
	// Target is the backup target the volume's backups go to by default;
	// "" means the default target.
	Target string `json:"target"`
}

// Attachment describes a volume attached as a host block device.
type Attachment struct {
	Device string `json:"device"`
	// Kind is "loop" (over the FUSE file) or "nbd" (kernel NBD).
	Kind string `json:"kind"`
	// MountPoint and FSType are set while the device is mounted by the agent.
	MountPoint string `json:"mount_point,omitempty"`
	FSType     string `json:"fs_type,omitempty"`
}

// Status describes the agent.
type Status struct {
	Version   string    `json:"version"`
	Started   time.Time `json:"started"`
	DataDir   string    `json:"data_dir"`
	APISocket string    `json:"api_socket"`
	NBDSocket string    `json:"nbd_socket"`
	NBDListen string    `json:"nbd_listen,omitempty"`
	// FUSEMount is the mount point of the volume files ("" when FUSE is off
	// or unusable; FUSEError then says why).
	FUSEMount string `json:"fuse_mount,omitempty"`
	FUSEError string `json:"fuse_error,omitempty"`
	Volumes   int    `json:"volumes"`
}

// CreateVolumeRequest is the body of POST /v1/volumes.
type CreateVolumeRequest struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	// Target is the volume's backup target ("" for the default target); it
	// must be registered.
	Target string `json:"target,omitempty"`
}

// UpdateVolumeRequest is the body of PATCH /v1/volumes/{name}: the
// settings it names change, the others stay.
type UpdateVolumeRequest struct {
	// Target sets the volume's backup target; "" resets it to the default
	// target.
	Target *string `json:"target,omitempty"`
}

// SizeRequest is the body of POST /v1/volumes/{name}/grow.
type SizeRequest struct {
	Size int64 `json:"size"`
}

// CloneRequest is the body of POST /v1/volumes/{name}/clone.
type CloneRequest struct {
	Snapshot string `json:"snapshot"`
	Name     string `json:"name"`
}

// SnapshotRequest is the body of POST /v1/volumes/{name}/snapshots. An
// empty name gets a generated one (UTC time).
type SnapshotRequest struct {
	Name string `json:"name"`
}

// AttachRequest is the body of POST /v1/volumes/{name}/attach.
type AttachRequest struct {
	NBD bool `json:"nbd"`
}

// MountRequest is the body of POST /v1/volumes/{name}/mount.
type MountRequest struct {
	Dir  string `json:"dir"`
	MkFS string `json:"mkfs,omitempty"`
}

// ErrorBody is every error response.
type ErrorBody struct {
	Error string `json:"error"`
	// Code: invalid, not_found, exists, in_use, corrupt, unavailable, internal.
	Code string `json:"code"`
}

// Error codes, mapped from and back to blockdev errors.
var errorCodes = []struct {
	err    error
	code   string
	status int
}{
	{blockdev.ErrInvalidName, "invalid", http.StatusBadRequest},
	{blockdev.ErrInvalidArgument, "invalid", http.StatusBadRequest},
	{blockdev.ErrNotFound, "not_found", http.StatusNotFound},
	{blockdev.ErrExists, "exists", http.StatusConflict},
	{blockdev.ErrInUse, "in_use", http.StatusConflict},
	{blockdev.ErrCorrupt, "corrupt", http.StatusInternalServerError},
	{errUnavailable, "unavailable", http.StatusServiceUnavailable},
}

// NewAPIError returns the error the agent means by code and message, as
// the client decodes it from an error answer: for errors reported inside
// a stream (an NDJSON "error" event), which has no HTTP status of its own.
func NewAPIError(code, message string) *APIError {
	status := http.StatusInternalServerError
	for _, ec := range errorCodes {
		if ec.code == code {
			status = ec.status
			break
		}
	}
	return &APIError{Status: status, Code: code, Message: message}
}

// errUnavailable: a feature the host cannot provide (no FUSE, no nbd.ko).
var errUnavailable = errors.New("unavailable on this host")

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// ErrorCode is the HTTP status and API error code the agent answers err
// with, from the blockdev sentinel it wraps (internal when none); API
// extensions use it for the error events of NDJSON answers.
func ErrorCode(err error) (status int, code string) {
	status, code = http.StatusInternalServerError, "internal"
	for _, ec := range errorCodes {
		if errors.Is(err, ec.err) {
			status, code = ec.status, ec.code
			break
		}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		status, code = http.StatusServiceUnavailable, "unavailable"
	}
	return status, code
}

func writeError(w http.ResponseWriter, err error) {
	status, code := ErrorCode(err)
	writeJSON(w, status, ErrorBody{Error: err.Error(), Code: code})
}

// maxBody bounds a request body.
const maxBody = 1 << 20

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && err != io.EOF { // an empty body means defaults
		return fmt.Errorf("request body: %v: %w", err, blockdev.ErrInvalidArgument)
	}
	return nil
}

// handler is an API handler that returns its result or an error.
type handler func(r *http.Request) (status int, body any, err error)

// withBody is a handler that decodes the JSON body into a Req (an empty
// body leaves it zero) and answers fn's result with status.
func withBody[Req any](status int, fn func(r *http.Request, req Req) (any, error)) handler {
	return func(r *http.Request) (int, any, error) {
		var req Req
		if err := decodeBody(r, &req); err != nil {
			return 0, nil, err
		}
		body, err := fn(r, req)
		return status, body, err
	}
}

func (a *Agent) routes(mux *http.ServeMux) {
	route := func(pattern string, h handler) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			status, body, err := h(r)
			if err != nil {
				writeError(w, err)
				a.log.Debug("api error", "route", pattern, "err", err)
				a.met.api.WithLabelValues(pattern, "error").Inc()
				return
			}
			a.met.api.WithLabelValues(pattern, strconv.Itoa(status)).Inc()
			if body == nil {
				w.WriteHeader(status)
				return
			}
			writeJSON(w, status, body)
		})
	}
	route("GET /v1/status", func(r *http.Request) (int, any, error) {
		st, err := a.status(r.Context())
		return http.StatusOK, st, err
	})
	route("GET /v1/volumes", func(r *http.Request) (int, any, error) {
		vs, err := a.volumes(r.Context())
		return http.StatusOK, vs, err
	})
	route("POST /v1/volumes", withBody(http.StatusCreated, func(r *http.Request, req CreateVolumeRequest) (any, error) {
		return a.createVolume(r.Context(), req)
	}))
	route("GET /v1/volumes/{name}", func(r *http.Request) (int, any, error) {
		vs, err := a.volume(r.Context(), r.PathValue("name"))
		return http.StatusOK, vs, err
	})
	route("PATCH /v1/volumes/{name}", withBody(http.StatusOK, func(r *http.Request, req UpdateVolumeRequest) (any, error) {
		return a.updateVolume(r.Context(), r.PathValue("name"), req)
	}))
	route("DELETE /v1/volumes/{name}", func(r *http.Request) (int, any, error) {
		return http.StatusNoContent, nil, a.deleteVolume(r.Context(), r.PathValue("name"))
	})
	route("POST /v1/volumes/{name}/grow", withBody(http.StatusOK, func(r *http.Request, req SizeRequest) (any, error) {
		name := r.PathValue("name")
		if err := a.mgr.Grow(r.Context(), name, req.Size); err != nil {
			return nil, err
		}
		if a.host != nil {
			if err := a.host.grown(r.Context(), name); err != nil {
				return nil, fmt.Errorf("volume %q grew to %d bytes, but its file or device kept the old size: %w", name, req.Size, err)
			}
		}
		return a.volume(r.Context(), name)
	}))
	route("POST /v1/volumes/{name}/clone", withBody(http.StatusCreated, func(r *http.Request, req CloneRequest) (any, error) {
		if err := a.cloneVolume(r.Context(), r.PathValue("name"), req); err != nil {
			return nil, err
		}
		return a.volume(r.Context(), req.Name)
	}))
	route("GET /v1/volumes/{name}/snapshots", func(r *http.Request) (int, any, error) {
		vi, err := a.mgr.Volume(r.Context(), r.PathValue("name"))
		return http.StatusOK, vi.Snapshots, err
	})
	route("POST /v1/volumes/{name}/snapshots", withBody(http.StatusCreated, func(r *http.Request, req SnapshotRequest) (any, error) {
		si, err := a.snapshot(r.Context(), r.PathValue("name"), snapshotName(req.Name))
		a.volumesChanged()
		return si, err
	}))
	route("DELETE /v1/volumes/{name}/snapshots/{snap}", func(r *http.Request) (int, any, error) {
		err := a.deleteSnapshot(r.Context(), r.PathValue("name"), r.PathValue("snap"))
		return http.StatusNoContent, nil, err
	})
	route("POST /v1/volumes/{name}/snapshots/{snap}/revert", func(r *http.Request) (int, any, error) {
		err := a.revert(r.Context(), r.PathValue("name"), r.PathValue("snap"))
		if err != nil {
			return 0, nil, err
		}
		vs, err := a.volume(r.Context(), r.PathValue("name"))
		return http.StatusOK, vs, err
	})
	route("POST /v1/snapshots", withBody(http.StatusCreated, func(r *http.Request, req GroupSnapshotRequest) (any, error) {
		req.Name = snapshotName(req.Name)
		return a.snapshotGroup(r.Context(), req)
	}))
	route("POST /v1/holds", withBody(http.StatusCreated, func(r *http.Request, req HoldRequest) (any, error) {
		return a.hold(r.Context(), req)
	}))
	route("POST /v1/holds/{id}/snapshots", withBody(http.StatusCreated, func(r *http.Request, req SnapshotRequest) (any, error) {
		return a.snapshotHold(r.Context(), r.PathValue("id"), snapshotName(req.Name))
	}))
	route("DELETE /v1/holds/{id}", func(r *http.Request) (int, any, error) {
		return http.StatusNoContent, nil, a.releaseHold(r.PathValue("id"))
	})
	route("POST /v1/volumes/{name}/attach", withBody(http.StatusOK, func(r *http.Request, req AttachRequest) (any, error) {
		return a.attach(r.Context(), r.PathValue("name"), req)
	}))
	route("POST /v1/volumes/{name}/detach", func(r *http.Request) (int, any, error) {
		return http.StatusNoContent, nil, a.detach(r.Context(), r.PathValue("name"))
	})
	route("POST /v1/volumes/{name}/mount", withBody(http.StatusOK, func(r *http.Request, req MountRequest) (any, error) {
		return a.mount(r.Context(), r.PathValue("name"), req)
	}))
	route("POST /v1/volumes/{name}/umount", func(r *http.Request) (int, any, error) {
		return http.StatusNoContent, nil, a.umount(r.Context(), r.PathValue("name"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.met.reg, promhttp.HandlerOpts{}))
}

// snapshotName is name, or a generated one (the UTC time) if empty.
func snapshotName(name string) string {
	if name == "" {
		return time.Now().UTC().Format("20060102t150405.000000z")
	}
	return name
}

// requireToken wraps h with a bearer-token check (for the TCP listener).
func requireToken(token string, h http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			writeJSON(w, http.StatusUnauthorized, ErrorBody{Error: "missing or wrong bearer token", Code: "unauthorized"})
			return
		}
		h.ServeHTTP(w, r)
	})
}
