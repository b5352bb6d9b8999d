package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their paths (the certificate is its own CA).
func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "strata-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for f, b := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "EC PRIVATE KEY", Bytes: kb}} {
		if err := os.WriteFile(f, pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

// freePort returns a loopback address nothing listens on (now).
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// Dial reaches the agent's TCP control API (api_listen) with TLS and its
// token, the way a coordinator on another host does.
func TestDialAgentOverTCP(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := selfSigned(t, t.TempDir())
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	a, err := New(t.Context(), Config{DataDir: dir, FUSE: "off", APIListen: addr, TLSCert: cert, TLSKey: key, TokenFile: tok}, "test", nil)
	if err != nil {
		t.Fatal(err)
	}
	stop, err := a.Start(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("agent.Run: %v", err)
		}
	})

	c, err := Dial("https://"+addr, DialOptions{TokenFile: tok, CAFile: cert})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateVolume(t.Context(), CreateVolumeRequest{Name: "vol-a", Size: mib}); err != nil {
		t.Fatalf("create over TCP: %v", err)
	}
	snaps, err := c.SnapshotGroup(t.Context(), "g1", []string{"vol-a"})
	if err != nil || len(snaps) != 1 {
		t.Fatalf("group snapshot over TCP: %+v, %v", snaps, err)
	}
	if m, err := c.Metrics(t.Context()); err != nil || !strings.Contains(m, "strata_volumes") {
		t.Errorf("metrics over TCP: %v", err)
	}

	bad := filepath.Join(t.TempDir(), "bad")
	if err := os.WriteFile(bad, []byte("a-wrong-token-of-some-length"), 0o600); err != nil {
		t.Fatal(err)
	}
	wrong, err := Dial("https://"+addr, DialOptions{TokenFile: bad, CAFile: cert})
	if err != nil {
		t.Fatal(err)
	}
	var ae *APIError
	if _, err := wrong.Volumes(t.Context()); !errors.As(err, &ae) || ae.Code != "unauthorized" || ae.Status != 401 {
		t.Errorf("wrong token: %v, want 401 unauthorized", err)
	}
}
