package proxy

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"time"
)

// hopServerName is the name every node's hop certificate carries: the
// nodes prove that they hold the hop secret, not an address.
const hopServerName = "hop.stagely.internal"

// hopTLS is the internal hop's TLS, derived from the nodes' shared secret:
// every node derives the same private CA key from HopSecret (HKDF-SHA256
// to an Ed25519 seed) and issues itself a certificate under it at start,
// and a node dialling another trusts that CA only. Preview traffic
// between nodes is so encrypted with no certificates to hand out, and
// only a holder of the secret can serve the hop. The HMAC on each request
// (hop.go) still decides what a request may claim.
type hopTLS struct {
	server, client *tls.Config
}

func newHopTLS(secret []byte) (*hopTLS, error) {
	seed, err := hkdf.Key(sha256.New, secret, nil, "stagely internal hop CA v1", ed25519.SeedSize)
	if err != nil {
		return nil, fmt.Errorf("hop TLS: derive the CA key: %w", err)
	}
	caKey := ed25519.NewKeyFromSeed(seed)
	// The CA certificate is the same on every node: fixed fields, and
	// Ed25519 signatures are deterministic.
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Stagely internal hop CA"},
		NotBefore:             time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2120, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("hop TLS: CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("hop TLS: CA certificate: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("hop TLS: node key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("hop TLS: serial: %w", err)
	}
	now := time.Now()
	leafTmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hopServerName},
		DNSNames:     []string{hopServerName},
		NotBefore:    now.Add(-time.Hour),
		// A node's key lives as long as its process; ten years outlast
		// any run.
		NotAfter:    now.AddDate(10, 0, 0),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("hop TLS: node certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &hopTLS{
		server: &tls.Config{
			Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: key}},
			MinVersion:   tls.VersionTLS13,
		},
		client: &tls.Config{
			RootCAs:    pool,
			ServerName: hopServerName,
			MinVersion: tls.VersionTLS13,
		},
	}, nil
}
