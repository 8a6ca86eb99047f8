package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/stagely-dev/stagely/proxy/certs"
	"github.com/stagely-dev/stagely/proxy/certs/certstest"
	"github.com/stagely-dev/stagely/tunnel"
)

// TestHTTPSThroughTheTunnelVerifiesAgainstPebblesRoot is done-when item 4
// end to end: Pebble issues the wildcard for the preview domain through
// DNS-01 (its challenge test server answers the TXT record), the proxy
// serves HTTPS with it, and a client that trusts only Pebble's root gets
// its answer from the preview's backend, through an agent's tunnel.
func TestHTTPSThroughTheTunnelVerifiesAgainstPebblesRoot(t *testing.T) {
	domain := certstest.PreviewDomain()
	env := certstest.Start(t, domain) // fails, never skips, without Pebble
	host := "abc123." + domain
	auth := tokenAuth{"token-tls-0123456789": tunnel.Identity{
		Agent: "agent-tls", Environment: "env-tls", Hostnames: []string{host},
	}}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	mgr, err := certs.New(ctx, env.Config(certs.ModeWildcard, &certmagic.FileStorage{Path: t.TempDir()}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mgr.Close)

	n := startNode(t, nodeOpts{tweak: func(c *Config) {
		c.PreviewDomain = domain
		c.Authenticator = auth
		c.WrapPlainHTTP = mgr.HTTPHandler
	}})
	be := backend(t)
	agentFor(t, n, "token-tls-0123456789", be.addr)

	tlsLn := listen(t)
	served := make(chan error, 1)
	go func() { served <- n.ServeTLS(context.Background(), tlsLn, mgr.TLSConfig()) }()

	// HTTP/1.1, then HTTP/2 (the certificate manager offers h2 by ALPN).
	for _, tc := range []struct{ name, proto string }{{"http1", "HTTP/1.1"}, {"h2", "HTTP/2.0"}} {
		proto := tc.proto
		t.Run(tc.name, func(t *testing.T) {
			client := env.Client(tlsLn.Addr().String())
			if proto == "HTTP/2.0" {
				client.Transport.(*http.Transport).ForceAttemptHTTP2 = true
			}
			resp, err := client.Get("https://" + host + "/headers")
			if err != nil {
				t.Fatalf("GET https://%s/headers, verifying against Pebble's root only: %v", host, err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET https://%s/headers = %s %q", host, resp.Status, body)
			}
			if resp.Proto != proto {
				t.Errorf("served over %s, want %s", resp.Proto, proto)
			}
			cs := resp.TLS
			if cs == nil || len(cs.VerifiedChains) == 0 {
				t.Fatal("no verified chain")
			}
			leaf := cs.PeerCertificates[0]
			if want := []string{"*." + domain}; !slices.Equal(leaf.DNSNames, want) {
				t.Errorf("served a certificate for %q, want the wildcard %q", leaf.DNSNames, want)
			}
			chain := cs.VerifiedChains[0]
			if root := chain[len(chain)-1]; !env.IssuedRoots.Equal(poolOf(root)) {
				t.Errorf("chain ends at %q, not at Pebble's root", root.Subject)
			}
			if cs.Version != tls.VersionTLS13 {
				t.Errorf("TLS version %x, want 1.3", cs.Version)
			}

			// The backend's own view: the request came through the agent
			// (only it knows the backend's address), for the preview host,
			// marked as HTTPS by the proxy.
			var seen struct {
				Host   string              `json:"host"`
				Header map[string][]string `json:"header"`
			}
			if err := json.Unmarshal(body, &seen); err != nil {
				t.Fatalf("backend answer %q: %v", body, err)
			}
			if seen.Host != host {
				t.Errorf("backend saw Host %q, want %q", seen.Host, host)
			}
			if got := seen.Header["X-Forwarded-Proto"]; !slices.Equal(got, []string{"https"}) {
				t.Errorf("backend saw X-Forwarded-Proto %q, want https", got)
			}
		})
	}

	// A preview host nobody serves still gets the certificate, and the 404
	// page over it.
	resp, err := env.Client(tlsLn.Addr().String()).Get("https://nobody." + domain + "/")
	if err != nil {
		t.Fatalf("GET an unrouted preview host: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unrouted preview host = %s, want 404", resp.Status)
	}

	n.Close()
	select {
	case err := <-served:
		if err != http.ErrServerClosed {
			t.Errorf("ServeTLS = %v after Close, want http.ErrServerClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("ServeTLS did not return after Close")
	}
}

func poolOf(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}
