package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/tunnel"
)

// startServer runs runServer with cfg and returns its SIGTERM and the
// channel its result arrives on. Cleanup does not wait for it: a server
// that never returns must fail the test, not hang it.
func startServer(t *testing.T, w *world, cfg serverConfig) (sigterm func(), done <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc, errc := make(chan string, 1), make(chan error, 1)
	go func() {
		errc <- runServer(ctx, cfg, w.logs, serverDeps{deployer: unavailableDeployer{}, listening: func(a string) { addrc <- a }})
	}()
	select {
	case a := <-addrc:
		w.sim.SetWebhookURL("http://" + a + "/api/github/hook")
	case err := <-errc:
		cancel()
		t.Fatalf("server did not start: %v", err)
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatal("server did not start within 20 s")
	}
	t.Cleanup(cancel)
	return cancel, errc
}

// previewServer starts a server with the local provider whose database
// holds a running environment (hash pv1234) and connects that
// environment's agent, forwarding to a backend whose /slow answers after
// 2 s. The client sends every request to the in-process proxy.
func previewServer(t *testing.T, w *world, cfg serverConfig) (c *http.Client, sigterm func(), done <-chan error) {
	t.Helper()
	ctx := context.Background()
	const token = "shutdown-agent-token-0123456789"
	sum := sha256.Sum256([]byte(token))
	for _, q := range []string{
		`INSERT INTO installations (id, account_login) VALUES (777001, 'acme')`,
		`INSERT INTO repositories (id, installation_id, owner, name) VALUES (777002, 777001, 'acme', 'shop')`,
		`INSERT INTO environments (repository_id, installation_id, owner, repo, pr_number, hash, desired_state, desired_sha,
		   observed_state, intent_seq, handled_seq) VALUES (777002, 777001, 'acme', 'shop', 1, 'pv1234', 'running', 'abc', 'running', 1, 1)`,
		`INSERT INTO agents (environment_id, attempt, key, provider, bootstrap_hash, token_hash, state)
		   SELECT id, 1, 'pv-key', 'local', 'pv-bootstrap', '` + hex.EncodeToString(sum[:]) + `', 'running' FROM environments WHERE hash = 'pv1234'`,
	} {
		if _, err := w.db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	sigterm, done = startServer(t, w, cfg)
	be := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(2 * time.Second)
		}
		io.WriteString(rw, "done "+r.URL.Path)
	}))
	t.Cleanup(be.Close)
	var caPEM []byte
	eventually(t, 10*time.Second, func() (bool, string) { // the fleet starts after the webhook listener
		var err error
		caPEM, err = os.ReadFile(filepath.Join(cfg.fleet.dataDir, "tunnel-ca.pem"))
		return err == nil, "no tunnel CA yet"
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	a, err := tunnel.NewAgent(tunnel.AgentConfig{Addr: cfg.fleet.tunnelAddr, Token: token,
		TLS:     &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"},
		Handler: &tunnel.Forward{Targets: map[string]string{"*": strings.TrimPrefix(be.URL, "http://")}},
		// The tunnel listener may come up a moment after the CA file.
		Backoff: tunnel.Backoff{Min: 50 * time.Millisecond, Max: 500 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithCancel(ctx)
	t.Cleanup(acancel)
	go a.Run(actx)
	d := &net.Dialer{}
	c = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, n, _ string) (net.Conn, error) {
			return d.DialContext(ctx, n, cfg.fleet.proxyAddr)
		}}}
	return c, sigterm, done
}

func localFleet(t *testing.T, w *world, workers int) serverConfig {
	cfg := w.config(workers)
	cfg.fleet = fleetConfig{provider: "local", dataDir: t.TempDir(), previewDomain: "preview.localhost",
		proxyAddr: freeAddr(t), tunnelAddr: freeAddr(t)}
	return cfg
}

// blockedSenders are the stacks of goroutines stuck sending to one of
// runServer's channels.
func blockedSenders() []string {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "[chan send") && (strings.Contains(g, "stagely.runServer.func") || strings.Contains(g, "stagely.startFleet.func")) {
			out = append(out, g)
		}
	}
	return out
}

// At SIGTERM the server's in-process proxy drains: a preview request in
// flight finishes, and the server returns with nothing left behind, its
// HTTPS listener included.
func TestServerDrainsPreviewRequestsAtSIGTERM(t *testing.T) {
	w := newWorld(t, nil)
	cfg := localFleet(t, w, 1)
	certFile, keyFile, _ := wildcardCert(t, "preview.localhost")
	cfg.fleet.https = previewTLS{addr: freeAddr(t), tlsCertFile: certFile, tlsKeyFile: keyFile}
	c, sigterm, done := previewServer(t, w, cfg)
	const host = "http://pv1234.preview.localhost"
	eventually(t, 30*time.Second, func() (bool, string) {
		resp, err := c.Get(host + "/hello")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	type result struct {
		status int
		body   string
		err    error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := c.Get(host + "/slow")
		if err != nil {
			res <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{resp.StatusCode, string(b), err}
	}()
	time.Sleep(300 * time.Millisecond)
	sigterm()
	if r := <-res; r.err != nil || r.status != 200 || r.body != "done /slow" {
		t.Errorf("a preview request in flight at SIGTERM got %d %q, %v; want it drained", r.status, r.body, r.err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("runServer did not return within 30 s of SIGTERM; blocked:\n%s", strings.Join(blockedSenders(), "\n\n"))
	}
	time.Sleep(500 * time.Millisecond)
	if s := blockedSenders(); len(s) > 0 {
		t.Fatalf("after runServer returned, %d goroutine(s) are blocked for ever on its error channel:\n%s", len(s), strings.Join(s, "\n\n"))
	}
}

// The server takes --preview-domain as people write it: preview hosts,
// grants and routes are lowercase, without the trailing dot.
func TestServerServesPreviewsUnderTheDomainAsWritten(t *testing.T) {
	for _, domain := range []string{"Preview.Localhost", "preview.localhost."} {
		t.Run(domain, func(t *testing.T) {
			w := newWorld(t, nil)
			cfg := localFleet(t, w, 0)
			cfg.fleet.previewDomain = domain
			c, _, _ := previewServer(t, w, cfg)
			eventually(t, 30*time.Second, func() (bool, string) {
				resp, err := c.Get("http://pv1234.preview.localhost/hello")
				if err != nil {
					return false, err.Error()
				}
				resp.Body.Close()
				return resp.StatusCode == 200, resp.Status
			})
		})
	}
}

// `stagely proxy` knows every hostname of its route file from the start:
// until that hostname's agent connects, a visitor is told the preview is
// not reachable right now (502), not that it may have been destroyed.
func TestProxyAnswers502ForAListedHostBeforeItsAgent(t *testing.T) {
	clearProxyEnv(t)
	dir := t.TempDir()
	httpAddr, tunnelAddr := freeAddr(t), freeAddr(t)
	routes := writeTestFile(t, dir, "routes", "abc123.preview.test 0123456789abcdef-preview-token\n")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- proxyCommand(io.Discard, io.Discard).ParseAndRun(ctx, []string{"--routes", routes,
			"--dev-ca-file", filepath.Join(dir, "ca.pem"), "--tunnel-addr", tunnelAddr, "--http-addr", httpAddr})
	}()
	t.Cleanup(func() { cancel(); <-done })
	d := &net.Dialer{}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, n, _ string) (net.Conn, error) { return d.DialContext(ctx, n, httpAddr) }}}
	status := func(host string) int {
		var code int
		eventually(t, 10*time.Second, func() (bool, string) {
			resp, err := c.Get("http://" + host + "/")
			if err != nil {
				return false, err.Error()
			}
			resp.Body.Close()
			code = resp.StatusCode
			return true, ""
		})
		return code
	}
	if got := status("abc123.preview.test"); got != http.StatusBadGateway {
		t.Errorf("a listed hostname whose agent is not connected answers %d, want 502", got)
	}
	if got := status("unlisted.preview.test"); got != http.StatusNotFound {
		t.Errorf("an unlisted hostname answers %d, want 404", got)
	}
}
