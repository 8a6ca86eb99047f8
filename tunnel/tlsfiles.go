package tunnel

import (
	"crypto/x509"
	"errors"
)

// CAPool makes a certificate pool from a PEM file's bytes, for
// AgentConfig.TLS.RootCAs when the proxy's certificate comes from a
// private CA (e.g. a DevCA's PEM).
func CAPool(pem []byte) (*x509.CertPool, error) {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		return nil, errors.New("no PEM certificate found")
	}
	return p, nil
}
