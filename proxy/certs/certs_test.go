package certs_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/libdns/libdns"
	"github.com/rs/zerolog"

	"github.com/stagely-dev/stagely/proxy/certs"
	"github.com/stagely-dev/stagely/proxy/certs/certstest"
)

// lockedBuffer is a log sink safe for certmagic's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// serveHTTPS serves, on a loopback port, an HTTPS server with tc that
// answers every request with its Host.
func serveHTTPS(t *testing.T, tc *tls.Config) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "preview %s", r.Host)
	}))
	srv.TLS = tc
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// handshake completes a TLS handshake with addr for serverName, verifying
// the chain against roots, and returns the leaf served.
func handshake(addr, serverName string, roots *x509.CertPool) (*x509.Certificate, error) {
	d := &net.Dialer{Timeout: 30 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: serverName, RootCAs: roots})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

func TestWildcardCertificateIsObtainedThroughDNS01AndServesEveryPreview(t *testing.T) {
	domain := certstest.PreviewDomain()
	env := certstest.Start(t, domain)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var logs lockedBuffer
	cfg := env.Config(certs.ModeWildcard, openStorage(t, testPrefix(t), 0))
	cfg.Logger = zerolog.New(&logs).Level(zerolog.InfoLevel)
	m, err := certs.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if !strings.Contains(logs.String(), "certificate obtained successfully") {
		t.Errorf("certmagic's log did not reach the zerolog logger; got:\n%s", logs.String())
	}

	addr := serveHTTPS(t, m.TLSConfig())
	client := env.Client(addr)
	var serials []string
	for _, host := range []string{"abc123." + domain, "xyz789." + domain} {
		resp, err := client.Get("https://" + host + "/")
		if err != nil {
			t.Fatalf("GET https://%s/ verified against Pebble's root: %v", host, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "preview "+host {
			t.Errorf("GET https://%s/ = %s %q", host, resp.Status, body)
		}
		leaf := resp.TLS.PeerCertificates[0]
		if want := []string{"*." + domain}; !slices.Equal(leaf.DNSNames, want) {
			t.Errorf("%s served a certificate for %q, want the wildcard %q", host, leaf.DNSNames, want)
		}
		serials = append(serials, leaf.SerialNumber.String())
	}
	if serials[0] != serials[1] {
		t.Errorf("two previews were served two certificates (%s, %s), want the one wildcard", serials[0], serials[1])
	}

	// Names the wildcard does not cover get no certificate of their own.
	for _, host := range []string{domain, "a.b." + domain} {
		if _, err := handshake(addr, host, env.IssuedRoots); err == nil {
			t.Errorf("handshake for %s succeeded; the wildcard does not cover it", host)
		}
	}
	if n := env.DNS.Appended(); n != 1 {
		t.Errorf("%d DNS-01 challenges answered, want 1 (one order, for the wildcard)", n)
	}
}

// silentDNS claims to add records but publishes nothing.
type silentDNS struct{ certs.DNSProvider }

func (silentDNS) AppendRecords(_ context.Context, _ string, recs []libdns.Record) ([]libdns.Record, error) {
	return recs, nil
}

func (silentDNS) DeleteRecords(_ context.Context, _ string, recs []libdns.Record) ([]libdns.Record, error) {
	return recs, nil
}

// TestWildcardIsRefusedWhenTheTXTRecordIsNotPublished shows Pebble really
// validates: without the record in DNS, no certificate.
func TestWildcardIsRefusedWhenTheTXTRecordIsNotPublished(t *testing.T) {
	domain := certstest.PreviewDomain()
	env := certstest.Start(t, domain)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := env.Config(certs.ModeWildcard, openStorage(t, testPrefix(t), 0))
	cfg.DNS = silentDNS{}
	cfg.DNSPropagationTimeout = -1 // the record would never appear
	m, err := certs.New(ctx, cfg)
	if err == nil {
		m.Close()
		t.Fatal("New obtained a certificate although no TXT record was published")
	}
	for _, want := range []string{"*." + domain, "unauthorized"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q: want the certificate named and the CA's refusal", err, want)
		}
	}
}

func TestProxiesSharingValkeyOrderTheWildcardOnce(t *testing.T) {
	domain := certstest.PreviewDomain()
	env := certstest.Start(t, domain)
	prefix := testPrefix(t)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()

	// Two proxies start together: one orders, the other waits on the
	// lock and then loads what the first stored.
	managers := make([]*certs.Manager, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range managers {
		wg.Go(func() {
			managers[i], errs[i] = certs.New(ctx, env.Config(certs.ModeWildcard, openStorage(t, prefix, 0)))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	// A third starts later and finds the certificate in storage.
	third, err := certs.New(ctx, env.Config(certs.ModeWildcard, openStorage(t, prefix, 0)))
	if err != nil {
		t.Fatal(err)
	}
	managers = append(managers, third)

	var serial string
	for i, m := range managers {
		defer m.Close()
		leaf, err := handshake(serveHTTPS(t, m.TLSConfig()), "abc123."+domain, env.IssuedRoots)
		if err != nil {
			t.Fatalf("proxy %d: %v", i, err)
		}
		if i == 0 {
			serial = leaf.SerialNumber.String()
		} else if leaf.SerialNumber.String() != serial {
			t.Errorf("proxy %d serves certificate %s, proxy 0 serves %s: want the one shared", i, leaf.SerialNumber, serial)
		}
	}
	if n := env.DNS.Appended(); n != 1 {
		t.Errorf("%d DNS-01 challenges answered for three proxies, want 1 (one order)", n)
	}
}

func TestOnDemandIssuesOnlyForPreviewHostsWithALiveRoute(t *testing.T) {
	domain := certstest.PreviewDomain()
	env := certstest.Start(t, domain)
	ctx := context.Background()

	errNoRoute := errors.New("no route")
	var mu sync.Mutex
	var asked []string
	cfg := env.Config(certs.ModeOnDemand, openStorage(t, testPrefix(t), 0))
	cfg.HasRoute = func(_ context.Context, name string) error {
		mu.Lock()
		defer mu.Unlock()
		asked = append(asked, name)
		if name == "live42."+domain {
			return nil
		}
		return errNoRoute
	}
	m, err := certs.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	addr := serveHTTPS(t, m.TLSConfig())

	tests := []struct {
		name      string
		host      string
		wantCert  bool
		wantAsked bool // HasRoute consulted
	}{
		{"a preview host with a live route gets its certificate", "live42." + domain, true, true},
		{"a preview host without a route is refused", "gone17." + domain, false, true},
		{"a name two labels deep is refused unasked", "a.b." + domain, false, false},
		{"a name outside the preview domain is refused unasked", "evil.example.com", false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			asked = nil
			mu.Unlock()
			leaf, err := handshake(addr, tc.host, env.IssuedRoots)
			if tc.wantCert {
				if err != nil {
					t.Fatalf("handshake for %s: %v", tc.host, err)
				}
				if !slices.Equal(leaf.DNSNames, []string{tc.host}) {
					t.Errorf("certificate for %q, want %q", leaf.DNSNames, tc.host)
				}
			} else if err == nil {
				t.Fatalf("handshake for %s succeeded with a certificate for %q", tc.host, leaf.DNSNames)
			}
			mu.Lock()
			defer mu.Unlock()
			if got := slices.Contains(asked, tc.host); got != tc.wantAsked {
				t.Errorf("HasRoute asked about %s: %v, want %v (asked %q)", tc.host, got, tc.wantAsked, asked)
			}
		})
	}
	if n := env.DNS.Appended(); n != 1 {
		t.Errorf("%d DNS-01 challenges answered, want 1 (the live preview's)", n)
	}
}

func TestPlainHTTPModeServesWithoutTLS(t *testing.T) {
	m, err := certs.New(context.Background(), certs.Config{Mode: certs.ModeHTTP})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if tc := m.TLSConfig(); tc != nil {
		t.Errorf("TLSConfig() = %v, want nil: no TLS in http mode", tc)
	}
	h := m.HTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "preview "+r.Host)
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://abc123.localhost/.well-known/acme-challenge/x", nil))
	if got := rec.Body.String(); got != "preview abc123.localhost" {
		t.Errorf("HTTPHandler answered %q, want the proxy's handler", got)
	}
}

func TestConfigVerifyNamesWhatIsMissing(t *testing.T) {
	hasRoute := func(context.Context, string) error { return nil }
	tests := []struct {
		name    string
		cfg     certs.Config
		wantErr string // "" for valid
	}{
		{"http mode needs nothing", certs.Config{Mode: certs.ModeHTTP}, ""},
		{"wildcard with cloudflare", certs.Config{PreviewDomain: "preview.example.com", Email: "ops@example.com", DNSProvider: "cloudflare", DNSAPIToken: "t"}, ""},
		// Without one certmagic would ask for it on stdin at start.
		{"wildcard without an email", certs.Config{PreviewDomain: "preview.example.com", DNSProvider: "cloudflare", DNSAPIToken: "t"}, "Email is required"},
		{"on-demand without DNS uses HTTP challenges", certs.Config{Mode: certs.ModeOnDemand, PreviewDomain: "preview.example.com", HasRoute: hasRoute}, ""},
		{"unknown mode", certs.Config{Mode: "magic", PreviewDomain: "preview.example.com"}, "unknown mode"},
		{"no preview domain", certs.Config{DNSProvider: "cloudflare", DNSAPIToken: "t"}, "PreviewDomain is required"},
		{"preview domain with a wildcard", certs.Config{PreviewDomain: "*.example.com", DNSProvider: "cloudflare", DNSAPIToken: "t"}, "not a domain name"},
		{"wildcard without DNS", certs.Config{PreviewDomain: "preview.example.com"}, "needs DNS-01"},
		{"cloudflare without a token", certs.Config{PreviewDomain: "preview.example.com", DNSProvider: "cloudflare"}, "DNSAPIToken is required"},
		{"unknown DNS provider", certs.Config{PreviewDomain: "preview.example.com", DNSProvider: "bind"}, "unknown DNSProvider"},
		{"on-demand without HasRoute", certs.Config{Mode: certs.ModeOnDemand, PreviewDomain: "preview.example.com"}, "HasRoute is required"},
		{"plain-HTTP ACME directory", certs.Config{PreviewDomain: "preview.example.com", DNSProvider: "cloudflare", DNSAPIToken: "t", ACMEDirectory: "http://ca.example.com/dir"}, "not an https URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Verify()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Verify() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Verify() = %v, want an error saying %q", err, tc.wantErr)
			}
		})
	}
}

// A proxy whose stored wildcard is due for renewal (10 of its 90 days
// left) starts, and serves it, while the CA cannot be reached: renewal is
// the cache's background work, with retries. Else a CA or DNS outage would
// keep every proxy from starting for the last third of the certificate's
// life.
func TestWildcardDueForRenewalIsServedWhileTheCAIsDown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const domain = "pv-renew.stagely.test"
	name := "*." + domain
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	directory := fmt.Sprintf("https://%s/dir", l.Addr()) // nobody listens there
	l.Close()

	storage := openStorage(t, testPrefix(t), 0)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(424242),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-80 * 24 * time.Hour),
		NotAfter:     time.Now().Add(10 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	issuer := (&certmagic.ACMEIssuer{CA: directory}).IssuerKey()
	for k, v := range map[string][]byte{
		certmagic.StorageKeys.SiteCert(issuer, name):       pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		certmagic.StorageKeys.SitePrivateKey(issuer, name): pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		certmagic.StorageKeys.SiteMeta(issuer, name):       []byte(`{"sans":["` + name + `"]}`),
	} {
		if err := storage.Store(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	m, err := certs.New(ctx, certs.Config{
		Mode:          certs.ModeWildcard,
		PreviewDomain: domain,
		ACMEDirectory: directory,
		Email:         "ops@example.com",
		DNS:           silentDNS{},
		Storage:       storage,
	})
	if err != nil {
		t.Fatalf("the proxy did not start, with a certificate valid 10 more days in storage: %v", err)
	}
	defer m.Close()
	c, err := m.TLSConfig().GetCertificate(&tls.ClientHelloInfo{ServerName: "abc123." + domain})
	if err != nil {
		t.Fatal(err)
	}
	if leaf, err := x509.ParseCertificate(c.Certificate[0]); err != nil || leaf.SerialNumber.Int64() != 424242 {
		t.Errorf("served %v (%v), want the stored certificate", leaf.SerialNumber, err)
	}
}
