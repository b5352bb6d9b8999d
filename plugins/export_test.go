package plugins

import (
	"testing"

	"github.com/hashicorp/go-plugin"
)

// NewInProcess serves the target open opens over a real gRPC connection
// inside the test process (go-plugin's TestPluginGRPCConn) and returns the
// client shim, configured with url.
func NewInProcess(t testing.TB, open OpenFunc, url string) Target {
	t.Helper()
	srv := newServer(open, testLogger(t))
	c, _ := plugin.TestPluginGRPCConn(t, false, map[string]plugin.Plugin{PluginName: &grpcPlugin{srv: srv}})
	t.Cleanup(func() {
		_ = c.Close()
		_ = srv.close()
	})
	raw, err := c.Dispense(PluginName)
	if err != nil {
		t.Fatalf("dispense: %v", err)
	}
	tc, ok := raw.(*client)
	if !ok {
		t.Fatalf("dispensed %T", raw)
	}
	if err := tc.configure(t.Context(), url, Credentials{}, nil); err != nil {
		t.Fatalf("configure: %v", err)
	}
	return tc
}
