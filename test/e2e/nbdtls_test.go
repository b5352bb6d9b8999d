package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNBDOverTLS: the NBD TCP listener serves only TLS clients with a
// certificate the configured CA signed (nbdinfo with libnbd's
// tls-certificates directory lists the volumes); a client without TLS or
// without a client certificate is refused; a server asked for nbd_listen
// without TLS and a client CA does not start. Before, --nbd-listen served
// every volume, read and write, to anyone reaching the port, in clear.
func TestNBDOverTLS(t *testing.T) {
	needRoot(t)
	pki := newTestPKI(t)
	addr := freeAddr(t)
	cfg := filepath.Join(t.TempDir(), "strata.toml")
	conf := fmt.Sprintf("nbd_listen = %q\ntls_cert = %q\ntls_key = %q\nnbd_client_ca = %q\nfuse = \"off\"\n",
		addr, pki.serverCert, pki.serverKey, filepath.Join(pki.clientDir, "ca-cert.pem"))
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, t.TempDir(), "--config", cfg)
	s.must("volume", "create", "vol-tls", "--size", "16MiB")

	out, err := exec.Command("nbdinfo", "--list", "nbds://"+addr+"/?tls-certificates="+pki.clientDir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "vol-tls") {
		t.Fatalf("nbdinfo --list over TLS with a client certificate: %v\n%s\nserver log:\n%s", err, out, s.log.String())
	}
	// Without TLS, and with TLS but no client certificate: refused.
	if out, err := exec.Command("nbdinfo", "--list", "nbd://"+addr+"/").CombinedOutput(); err == nil || strings.Contains(string(out), "vol-tls") {
		t.Fatalf("nbdinfo --list without TLS: %v\n%s", err, out)
	}
	if out, err := exec.Command("nbdinfo", "--list", "nbds://"+addr+"/?tls-certificates="+pki.caOnlyDir).CombinedOutput(); err == nil || strings.Contains(string(out), "vol-tls") {
		t.Fatalf("nbdinfo --list over TLS without a client certificate: %v\n%s", err, out)
	}

	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte(fmt.Sprintf("nbd_listen = %q\n", freeAddr(t))), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(strataBin, "server", "--data-dir", t.TempDir(), "--config", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "needs tls_cert, tls_key and nbd_client_ca") {
		t.Fatalf("server with nbd_listen and no TLS: err %v, output %q", err, out)
	}
}

// testPKI is a CA (caCert), a server certificate for 127.0.0.1 and a
// client certificate, laid out as libnbd's tls-certificates directory
// wants (clientDir: ca-cert.pem, client-cert.pem, client-key.pem;
// caOnlyDir: ca-cert.pem alone).
type testPKI struct {
	serverCert, serverKey string
	caCert                string
	clientDir, caOnlyDir  string
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "strata e2e CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP) (certPEM, keyPEM []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	srvCert, srvKey := issue(2, "127.0.0.1", x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP("127.0.0.1")})
	cliCert, cliKey := issue(3, "strata e2e client", x509.ExtKeyUsageClientAuth, nil)
	p := testPKI{clientDir: t.TempDir(), caOnlyDir: t.TempDir()}
	p.caCert = filepath.Join(p.caOnlyDir, "ca-cert.pem")
	srvDir := t.TempDir()
	p.serverCert, p.serverKey = filepath.Join(srvDir, "server-cert.pem"), filepath.Join(srvDir, "server-key.pem")
	for path, b := range map[string][]byte{
		p.serverCert: srvCert, p.serverKey: srvKey,
		filepath.Join(p.clientDir, "ca-cert.pem"): caPEM, filepath.Join(p.clientDir, "client-cert.pem"): cliCert,
		filepath.Join(p.clientDir, "client-key.pem"): cliKey, filepath.Join(p.caOnlyDir, "ca-cert.pem"): caPEM,
	} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}
