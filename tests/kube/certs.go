package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Files in the cluster dir. Existing ones are reused, so a cluster restarted
// on the same dir keeps its kubeconfig valid.
const (
	caCertFile      = "ca.crt"
	caKeyFile       = "ca.key"
	servingCertFile = "apiserver.crt"
	servingKeyFile  = "apiserver.key"
	saKeyFile       = "sa.key"
	saPubFile       = "sa.pub"
	tokenFile       = "tokens.csv"
)

// clusterTokens are the bearer tokens of the users the cluster knows.
type clusterTokens struct {
	admin, controllerManager, scheduler, kwok string
}

// ensureCredentials creates (or loads) the CA, the apiserver serving cert,
// the service-account key pair and the token file in dir.
func ensureCredentials(dir string, serviceIP net.IP) (clusterTokens, error) {
	var toks clusterTokens
	if !allExist(dir, caCertFile, caKeyFile, servingCertFile, servingKeyFile) {
		if err := writeCerts(dir, serviceIP); err != nil {
			return toks, fmt.Errorf("certificates: %w", err)
		}
	}
	if !allExist(dir, saKeyFile, saPubFile) {
		if err := writeServiceAccountKeys(dir); err != nil {
			return toks, fmt.Errorf("service-account keys: %w", err)
		}
	}
	return ensureTokens(dir)
}

func allExist(dir string, names ...string) bool {
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			return false
		}
	}
	return true
}

// writeCerts makes a CA and a serving cert signed by it. Clients such as
// kube-rs over rustls verify the chain and SANs strictly (no CN fallback,
// no CA as leaf), so the leaf is a proper non-CA server certificate.
func writeCerts(dir string, serviceIP net.IP) error {
	now := time.Now().Add(-time.Hour) // tolerate small clock skew
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "optikon-test-ca"},
		NotBefore:             now,
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now,
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{
			"localhost", "kubernetes", "kubernetes.default",
			"kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
		},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1"), serviceIP},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return err
	}

	// Keys first, certs last: allExist(cert...) then implies a complete set.
	if err := writeKey(filepath.Join(dir, caKeyFile), caKey); err != nil {
		return err
	}
	if err := writeKey(filepath.Join(dir, servingKeyFile), key); err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, servingCertFile), "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, caCertFile), "CERTIFICATE", caDER, 0o644)
}

// writeServiceAccountKeys makes the RSA pair that signs and verifies
// service-account tokens (RS256 is what every client library expects).
func writeServiceAccountKeys(dir string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := writeKey(filepath.Join(dir, saKeyFile), key); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, saPubFile), "PUBLIC KEY", pub, 0o644)
}

func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func randomToken() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// ensureTokens writes (or reads back) the static token file. The admin is in
// system:masters, which RBAC always allows; controller-manager and scheduler
// get the identities their bootstrap RBAC roles are bound to; kwok writes
// node and pod status for fake kubelets, so it is a master too.
func ensureTokens(dir string) (clusterTokens, error) {
	path := filepath.Join(dir, tokenFile)
	if data, err := os.ReadFile(path); err == nil {
		return parseTokens(data)
	} else if !errors.Is(err, os.ErrNotExist) {
		return clusterTokens{}, err
	}
	t := clusterTokens{
		admin:             randomToken(),
		controllerManager: randomToken(),
		scheduler:         randomToken(),
		kwok:              randomToken(),
	}
	// Format: token,user,uid,"group1,group2" (kube-apiserver --token-auth-file).
	content := fmt.Sprintf("%s,admin,admin,\"system:masters\"\n"+
		"%s,system:kube-controller-manager,system:kube-controller-manager\n"+
		"%s,system:kube-scheduler,system:kube-scheduler\n"+
		"%s,kwok,kwok,\"system:masters\"\n",
		t.admin, t.controllerManager, t.scheduler, t.kwok)
	return t, os.WriteFile(path, []byte(content), 0o600)
}

func parseTokens(data []byte) (clusterTokens, error) {
	var t clusterTokens
	byUser := map[string]*string{
		"admin": &t.admin, "system:kube-controller-manager": &t.controllerManager,
		"system:kube-scheduler": &t.scheduler, "kwok": &t.kwok,
	}
	for _, line := range strings.Split(string(data), "\n") {
		tok, rest, _ := strings.Cut(line, ",")
		user, _, _ := strings.Cut(rest, ",")
		if p, ok := byUser[user]; ok {
			*p = tok
		}
	}
	if t.admin == "" || t.controllerManager == "" || t.scheduler == "" || t.kwok == "" {
		return t, fmt.Errorf("%s is incomplete; delete the cluster dir and start again", tokenFile)
	}
	return t, nil
}
