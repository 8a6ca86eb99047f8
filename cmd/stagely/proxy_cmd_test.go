package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/proxy/certs"
	"github.com/stagely-dev/stagely/proxy/certs/certstest"
	"github.com/stagely-dev/stagely/tunnel"
)

// clearProxyEnv keeps STAGELY_* variables of the machine's environment
// out of a test of `stagely proxy`.
func clearProxyEnv(t *testing.T) { clearEnvOf(t, proxyCommand(io.Discard, io.Discard).FlagSet) }

// clearEnvOf keeps the STAGELY_* variables of fs's flags, set in the
// machine's environment, out of a test.
func clearEnvOf(t *testing.T, fs *flag.FlagSet) {
	t.Helper()
	fs.VisitAll(func(f *flag.Flag) { t.Setenv(envName(f.Name), "") })
}

func TestProxyTLSSettingsAreCheckedAndNamed(t *testing.T) {
	clearProxyEnv(t)
	dir := t.TempDir()
	base := []string{"proxy", "--routes", filepath.Join(dir, "routes"), "--dev-ca-file", filepath.Join(dir, "ca.pem")}
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want []string
	}{
		{"https without a certificate source", nil,
			[]string{"--https-addr", ":8443"},
			[]string{"--https-addr (STAGELY_HTTPS_ADDR)", "--tls-mode (STAGELY_TLS_MODE)"}},
		{"unknown mode", nil,
			[]string{"--tls-mode", "letsencrypt"},
			[]string{"--tls-mode (STAGELY_TLS_MODE)", `"letsencrypt"`}},
		{"unknown mode from the environment", map[string]string{"STAGELY_TLS_MODE": "acme"},
			nil,
			[]string{"--tls-mode (STAGELY_TLS_MODE)", `"acme"`}},
		{"wildcard needs an address, a domain, a DNS provider and an email", nil,
			[]string{"--tls-mode", "wildcard"},
			[]string{"--https-addr (STAGELY_HTTPS_ADDR)", "--preview-domain (STAGELY_PREVIEW_DOMAIN)", "--dns-provider (STAGELY_DNS_PROVIDER)", "--acme-email (STAGELY_ACME_EMAIL)"}},
		{"cloudflare needs its token", nil,
			[]string{"--tls-mode", "wildcard", "--https-addr", ":8443", "--preview-domain", "preview.example.com", "--dns-provider", "cloudflare", "--acme-email", "ops@example.com"},
			[]string{"--dns-api-token (STAGELY_DNS_API_TOKEN)"}},
		{"the token comes from the environment", map[string]string{"STAGELY_DNS_API_TOKEN": "cf-token", "STAGELY_TLS_MODE": "wildcard"},
			[]string{"--https-addr", ":8443", "--preview-domain", "preview.example.com", "--dns-provider", "route53", "--acme-email", "ops@example.com"},
			[]string{"--dns-provider (STAGELY_DNS_PROVIDER)", `"route53"`, "cloudflare"}},
		{"a token without a provider", nil,
			[]string{"--tls-mode", "on-demand", "--https-addr", ":8443", "--preview-domain", "preview.example.com", "--dns-api-token", "t"},
			[]string{"--dns-api-token (STAGELY_DNS_API_TOKEN)", "--dns-provider (STAGELY_DNS_PROVIDER)"}},
		{"on-demand needs the preview domain", nil,
			[]string{"--tls-mode", "on-demand", "--https-addr", ":8443"},
			[]string{"--preview-domain (STAGELY_PREVIEW_DOMAIN)"}},
		{"shared certificate storage needs Valkey", nil,
			[]string{"--tls-mode", "on-demand", "--https-addr", ":8443", "--preview-domain", "preview.example.com", "--cert-storage", "valkey"},
			[]string{"--cert-storage (STAGELY_CERT_STORAGE)", "--valkey-url (STAGELY_VALKEY_URL)"}},
		{"an ACME directory must be https", nil,
			[]string{"--tls-mode", "on-demand", "--https-addr", ":8443", "--preview-domain", "preview.example.com", "--acme-directory", "http://ca.test/dir"},
			[]string{"--acme-directory (STAGELY_ACME_DIRECTORY)"}},
		{"file mode needs both files", nil,
			[]string{"--tls-mode", "file", "--https-addr", ":8443", "--tls-cert-file", "c.pem"},
			[]string{"--tls-key-file (STAGELY_TLS_KEY_FILE)"}},
		{"certificate files are the file mode", nil,
			[]string{"--tls-mode", "wildcard", "--https-addr", ":8443", "--preview-domain", "preview.example.com", "--dns-provider", "cloudflare", "--dns-api-token", "t", "--acme-email", "ops@example.com", "--tls-cert-file", "c.pem"},
			[]string{"--tls-cert-file (STAGELY_TLS_CERT_FILE)", "--tls-mode file"}},
		{"ACME settings are not file settings", nil,
			[]string{"--tls-cert-file", "c.pem", "--tls-key-file", "k.pem", "--https-addr", ":8443", "--acme-email", "ops@example.com"},
			[]string{"--acme-email (STAGELY_ACME_EMAIL)", "--tls-mode wildcard or on-demand"}},
		{"ACME settings without HTTPS", nil,
			[]string{"--cert-storage", "/var/lib/certs"},
			[]string{"--cert-storage (STAGELY_CERT_STORAGE)", "not with --tls-mode none"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			var out, errb bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := run(ctx, append(slices.Clone(base), c.args...), &out, &errb)
			if err == nil {
				t.Fatal("the proxy started with these settings")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

// The other nodes dial a node's advertised hop address: one that names
// no host would name every node alike, and each would take every agent
// for its own and answer 502.
func TestProxyHopNeedsAnAddressOtherNodesCanDial(t *testing.T) {
	clearProxyEnv(t)
	dir := t.TempDir()
	routes := writeTestFile(t, dir, "routes", "app.localhost token-one-0123456789\n")
	base := []string{"proxy", "--routes", routes, "--dev-ca-file", filepath.Join(dir, "ca.pem"),
		"--http-addr", "127.0.0.1:0", "--valkey-url", "redis://127.0.0.1:1/0", "--hop-secret", strings.Repeat("s", 32)}
	for _, args := range [][]string{
		{"--hop-addr", ":9443"},
		{"--hop-addr", "0.0.0.0:9443"},
		{"--hop-addr", "[::]:9443"},
		{"--hop-addr", "10.0.0.5:9443", "--advertise-addr", "0.0.0.0:9443"},
	} {
		var out, errb bytes.Buffer
		err := run(context.Background(), append(slices.Clone(base), args...), &out, &errb)
		if err == nil || !strings.Contains(err.Error(), "--advertise-addr (STAGELY_ADVERTISE_ADDR)") {
			t.Errorf("%v: err = %v, want one naming --advertise-addr", args, err)
		}
	}
}

func TestProxyRefusesAnACMECAFileWithoutCertificates(t *testing.T) {
	clearProxyEnv(t)
	dir := t.TempDir()
	routes := writeTestFile(t, dir, "routes", "app.preview.test 0123456789abcdef-token\n")
	caFile := writeTestFile(t, dir, "acme-ca.pem", "not a certificate\n")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := run(ctx, []string{"proxy", "--routes", routes, "--dev-ca-file", filepath.Join(dir, "ca.pem"),
		"--tunnel-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0",
		"--preview-domain", "preview.test", "--tls-mode", "on-demand", "--acme-ca-file", caFile,
		"--cert-storage", filepath.Join(dir, "certs")}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--acme-ca-file (STAGELY_ACME_CA_FILE)") {
		t.Fatalf("run = %v, want an error naming --acme-ca-file", err)
	}
}

func TestProxyHelpListsTheTLSSettings(t *testing.T) {
	var out, errb bytes.Buffer
	_ = run(context.Background(), []string{"proxy", "--help"}, &out, &errb)
	help := errb.String() + out.String()
	for _, name := range []string{"https-addr", "tls-mode", "tls-cert-file", "tls-key-file", "acme-directory", "acme-email",
		"acme-ca-file", "dns-provider", "dns-api-token", "cert-storage", "valkey-url"} {
		if !strings.Contains(help, "--"+name+", "+envName(name)) {
			t.Errorf("--help does not list --%s with %s", name, envName(name))
		}
	}
}

// proxyRun is `stagely proxy` running in this process with ACME against
// a Pebble CA.
type proxyRun struct {
	env                      *certstest.Env
	https, http, tunnel      string
	devCA                    string
	token, host, backendAddr string
	done                     chan error
	stop                     context.CancelFunc
	logs                     *syncBuffer
}

// startProxyCmd runs the command in mode against env's Pebble; DNS-01 goes
// to Pebble's challenge server instead of Cloudflare (the only setting a
// flag cannot reach).
func startProxyCmd(t *testing.T, env *certstest.Env, mode string) *proxyRun {
	t.Helper()
	clearProxyEnv(t)
	dir := t.TempDir()
	r := &proxyRun{
		env:    env,
		https:  freeAddr(t),
		http:   freeAddr(t),
		tunnel: freeAddr(t),
		devCA:  filepath.Join(dir, "dev-ca.pem"),
		token:  "0123456789abcdef-preview-token",
		host:   "abc123." + env.Domain,
		done:   make(chan error, 1),
		logs:   &syncBuffer{},
	}
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		fmt.Fprintf(w, "preview %s over %s", req.Host, req.Header.Get("X-Forwarded-Proto"))
	}))
	t.Cleanup(be.Close)
	r.backendAddr = be.Listener.Addr().String()
	routes := writeTestFile(t, dir, "routes", r.host+" "+r.token+"\n")
	acmeCA := writeTestFile(t, dir, "acme-ca.pem", string(env.ACMERootsPEM))
	args := []string{
		"--routes", routes, "--dev-ca-file", r.devCA, "--dev-ca-names", "127.0.0.1",
		"--tunnel-addr", r.tunnel, "--http-addr", r.http, "--https-addr", r.https,
		"--preview-domain", env.Domain, "--tls-mode", mode,
		"--acme-directory", env.Directory, "--acme-email", "ops@example.com", "--acme-ca-file", acmeCA,
		"--dns-provider", "cloudflare", "--dns-api-token", "not-used-pebble-answers",
		"--cert-storage", filepath.Join(dir, "certs"),
		"--log-level", "debug",
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	cmd := proxyCommandWith(io.Discard, r.logs, func(c *certs.Config) {
		c.DNS = env.DNS
		c.DNSResolvers = []string{env.Resolver}
	})
	go func() { r.done <- cmd.ParseAndRun(ctx, args) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(40 * time.Second):
			t.Error("stagely proxy did not stop")
		}
		if t.Failed() {
			t.Logf("stagely proxy logs:\n%s", r.logs.String())
		}
	})
	// Ready when the HTTPS port answers: every listener starts after the
	// certificate manager.
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-r.done:
			t.Fatalf("stagely proxy exited: %v", err)
		default:
		}
		if c, err := net.Dial("tcp", r.https); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("stagely proxy did not listen on --https-addr")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return r
}

// connectAgent connects an agent with the route file's token, forwarding
// to the backend, as `stagely agent --expose` would.
func (r *proxyRun) connectAgent(t *testing.T) {
	t.Helper()
	pem, err := os.ReadFile(r.devCA)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := tunnel.CAPool(pem)
	if err != nil {
		t.Fatal(err)
	}
	a, err := tunnel.NewAgent(tunnel.AgentConfig{
		Addr:    r.tunnel,
		Token:   r.token,
		TLS:     &tls.Config{RootCAs: pool},
		Handler: &tunnel.Forward{Targets: map[string]string{r.host: r.backendAddr}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if _, err := a.WaitConnected(wctx); err != nil {
		t.Fatal(err)
	}
}

// getPreview GETs https://host/ through the proxy, verifying it against
// Pebble's root only, retrying while the route is being published: the
// agent knows it is connected a moment before the proxy has published its
// route, and until then on-demand mode refuses the handshake.
func (r *proxyRun) getPreview(t *testing.T, host string) (*http.Response, string) {
	t.Helper()
	client := r.env.Client(r.https)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := client.Get("https://" + host + "/")
		if err != nil {
			if time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			t.Fatalf("GET https://%s/ verified against Pebble's root: %v", host, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK || time.Now().After(deadline) {
			return resp, string(body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestProxyCommandServesHTTPSWithAWildcardFromTheACMECA(t *testing.T) {
	env := certstest.Start(t, certstest.PreviewDomain())
	r := startProxyCmd(t, env, "wildcard")
	r.connectAgent(t)

	resp, body := r.getPreview(t, r.host)
	if resp.StatusCode != http.StatusOK || body != "preview "+r.host+" over https" {
		t.Fatalf("GET https://%s/ = %s %q, want the backend's answer through the tunnel", r.host, resp.Status, body)
	}
	if leaf := resp.TLS.PeerCertificates[0]; !slices.Equal(leaf.DNSNames, []string{"*." + env.Domain}) {
		t.Errorf("served a certificate for %q, want the wildcard", leaf.DNSNames)
	}
	if n := env.DNS.Appended(); n != 1 {
		t.Errorf("%d DNS-01 challenges answered, want 1", n)
	}

	// The plain HTTP listener, wrapped for ACME HTTP-01 challenges, still
	// routes.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, r.http)
		},
	}}
	hresp, err := hc.Get("http://" + r.host + "/")
	if err != nil {
		t.Fatal(err)
	}
	hbody, _ := io.ReadAll(hresp.Body)
	hresp.Body.Close()
	if hresp.StatusCode != http.StatusOK || string(hbody) != "preview "+r.host+" over http" {
		t.Errorf("GET http://%s/ = %s %q", r.host, hresp.Status, hbody)
	}

	r.stop()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("stagely proxy returned %v on shutdown", err)
		}
		r.done <- err // for the cleanup
	case <-time.After(40 * time.Second):
		t.Fatal("stagely proxy did not stop")
	}
}

func TestProxyCommandIssuesOnDemandOnlyForLiveRoutes(t *testing.T) {
	env := certstest.Start(t, certstest.PreviewDomain())
	r := startProxyCmd(t, env, "on-demand")
	handshake := func(host string) error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}, "tcp", r.https,
			&tls.Config{ServerName: host, RootCAs: env.IssuedRoots})
		if err != nil {
			return err
		}
		defer c.Close()
		if got := c.ConnectionState().PeerCertificates[0].DNSNames; !slices.Equal(got, []string{host}) {
			return fmt.Errorf("certificate for %q", got)
		}
		return nil
	}

	// The route exists in the file, but no agent serves it yet: no
	// certificate.
	if err := handshake(r.host); err == nil {
		t.Fatalf("a certificate was issued for %s before its agent connected", r.host)
	}
	r.connectAgent(t)
	resp, body := r.getPreview(t, r.host)
	if resp.StatusCode != http.StatusOK || body != "preview "+r.host+" over https" {
		t.Fatalf("GET https://%s/ = %s %q", r.host, resp.Status, body)
	}
	if err := handshake(r.host); err != nil {
		t.Errorf("handshake for %s with a live route: %v", r.host, err)
	}
	for _, host := range []string{"nobody." + env.Domain, "a.b." + env.Domain, "example.org"} {
		if err := handshake(host); err == nil {
			t.Errorf("a certificate was issued for %s, which has no live route", host)
		}
	}
	if n := env.DNS.Appended(); n != 1 {
		t.Errorf("%d DNS-01 challenges answered, want 1 (the one live host)", n)
	}
}

func writeTestFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
