package plugins

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/keepalive"

	targetv1 "github.com/strata-block/strata/plugins/proto/v1"
)

// Protocol versions. The host offers every version it speaks and the
// plugin picks the highest it shares (go-plugin's VersionedPlugins); a
// plugin sharing none fails the handshake with a message naming both
// sides' versions.
//
// History:
//
//	1  Configure, Info, Put, PutIfAbsent, Get, Has, List, Delete
//	   (plugins/proto/v1, issue 6). Later, compatibly (optional fields
//	   an older peer ignores): the local data plane, advertised in
//	   ConfigureResponse.pipe_data_plane (dataplane.go).
const ProtocolVersion = 1

// PluginName is the name the target is dispensed under in the plugin set.
const PluginName = "target"

// Handshake is the go-plugin handshake every target plugin uses. The magic
// cookie only keeps a plugin from being run by hand by mistake; it is not
// a security measure (AutoMTLS authenticates the connection).
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "STRATA_TARGET_PLUGIN",
	MagicCookieValue: "a4f0e0c6-backup-target",
}

// grpcPlugin is the go-plugin glue: the server side registers srv, the
// client side wraps the connection in the client shim.
type grpcPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	srv *server // plugin side only
}

var _ plugin.GRPCPlugin = (*grpcPlugin)(nil)

func (p *grpcPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	if p.srv == nil {
		return fmt.Errorf("target plugin: no server to register: %w", ErrPermanent)
	}
	targetv1.RegisterTargetServer(s, p.srv)
	return nil
}

func (p *grpcPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, cc *grpc.ClientConn) (any, error) {
	return newClient(targetv1.NewTargetClient(cc)), nil
}

// pluginSets returns the versioned plugin sets, serving srv (nil on the
// host side).
func pluginSets(srv *server) map[int]plugin.PluginSet {
	return map[int]plugin.PluginSet{
		1: {PluginName: &grpcPlugin{srv: srv}},
	}
}

// ServeConfig configures Serve.
type ServeConfig struct {
	// Open opens the target once the host sends its configuration.
	Open OpenFunc
	// Logger is the plugin's logger; nil means NewPluginLogger on the
	// process's standard error at Info, which the host turns back into
	// its own log records.
	Logger *slog.Logger
	// DisableDataPlane serves payloads in data messages only, as a plugin
	// without the data plane does, even if the host passed a socket.
	DisableDataPlane bool
}

// Serve runs the calling process as a target plugin until the host stops
// it. It is what `strata plugin serve fs|s3` and an external
// strata-target-<name> executable call from main. Run by hand rather than
// by a host, it prints a message saying so and exits with status 1.
func Serve(cfg ServeConfig) {
	logger := cfg.Logger
	if logger == nil {
		logger = NewPluginLogger(os.Stderr, slog.LevelInfo)
	}
	srv := newServer(cfg.Open, logger)
	srv.chunks = true // serverOptions installs codec
	if !cfg.DisableDataPlane {
		plane, err := pluginPlaneFromEnv(logger)
		if err != nil {
			// Payloads then take the gRPC stream; the host sees no data
			// plane advertised.
			logger.Warn("not serving the data plane", "err", err)
		}
		srv.plane = plane
	}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: pluginSets(srv),
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			return grpc.NewServer(append(opts, serverOptions()...)...)
		},
		Logger: newHCLog(logger, ""),
	})
	// The plane first: it waits for the requests it is serving, which use
	// the target.
	if srv.plane != nil {
		_ = srv.plane.close()
	}
	if err := srv.close(); err != nil {
		logger.Warn("closing the target", "err", err)
	}
}

// Transport tuning, chosen by measurement (benchmarks/RESULTS.md): HTTP/2
// flow-control windows large enough for several 1 MiB messages in flight,
// so a streamed Put or Get is not throttled to one window per round trip,
// and socket buffers that take a whole message per write.
const (
	windowSize = 16 << 20
	bufferSize = 1 << 20
)

// keepaliveTime is the shortest interval between keepalive pings a plugin
// accepts. The host sends none: a plugin built before this policy
// (gRPC's default allows one ping per 5 minutes) would close the
// connection as "too many pings". A plugin that stops answering is found
// by the host's health check instead, once a call to it ends with its
// caller's context (Remote.retryN).
const keepaliveTime = 30 * time.Second

func serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveTime / 2, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(MaxMessageSize), grpc.MaxSendMsgSize(MaxMessageSize),
		grpc.InitialWindowSize(windowSize), grpc.InitialConnWindowSize(windowSize),
		grpc.WriteBufferSize(bufferSize), grpc.ReadBufferSize(bufferSize),
		grpc.ForceServerCodecV2(codec{}), experimental.BufferPool(bufPool),
	}
}

func dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize), grpc.MaxCallSendMsgSize(MaxMessageSize)),
		grpc.WithInitialWindowSize(windowSize), grpc.WithInitialConnWindowSize(windowSize),
		grpc.WithWriteBufferSize(bufferSize), grpc.WithReadBufferSize(bufferSize),
		experimental.WithBufferPool(bufPool),
	}
}
