package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/tunnel"
)

// clearAgentEnv keeps STAGELY_* variables of the machine's environment
// out of a test of `stagely agent`.
func clearAgentEnv(t *testing.T) { clearEnvOf(t, agentExposeCommand(io.Discard, io.Discard).FlagSet) }

// runInBackground runs `stagely args...` until the returned stop is
// called (at the latest when the test ends); its logs go to logs.
func runInBackground(t *testing.T, logs io.Writer, args ...string) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = run(ctx, args, io.Discard, logs) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

// An agent trusts the --ca file it was started with: a proxy that made a
// new development CA at each start would strand it at the first restart.
func TestStandaloneAgentComesBackAfterTheProxyRestarts(t *testing.T) {
	clearProxyEnv(t)
	clearAgentEnv(t)
	const token = "restart-token-0123456789"
	dir := t.TempDir()
	devCA, tunnelAddr, httpAddr := filepath.Join(dir, "ca.pem"), freeAddr(t), freeAddr(t)
	proxyArgs := []string{"proxy", "--routes", writeTestFile(t, dir, "routes", "app.localhost "+token+"\n"),
		"--dev-ca-file", devCA, "--dev-ca-names", "127.0.0.1", "--tunnel-addr", tunnelAddr, "--http-addr", httpAddr, "--drain-timeout", "2s"}
	var logs syncBuffer
	answers := func(want int) func() (bool, string) {
		return func() (bool, string) {
			req, _ := http.NewRequest(http.MethodGet, "http://"+httpAddr+"/", nil)
			req.Host = "app.localhost"
			resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
			if err != nil {
				return false, err.Error()
			}
			resp.Body.Close()
			return resp.StatusCode == want, fmt.Sprintf("%s; agent:\n%s", resp.Status, &logs)
		}
	}
	served := answers(http.StatusOK)
	stopProxy := runInBackground(t, io.Discard, proxyArgs...)
	eventually(t, 10*time.Second, answers(http.StatusBadGateway)) // listening, its CA written
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(be.Close)
	runInBackground(t, &logs, "agent", "--expose", "app.localhost="+be.Listener.Addr().String(),
		"--proxy", tunnelAddr, "--token", token, "--ca", devCA, "--log-format", "json")
	eventually(t, 10*time.Second, served)
	stopProxy()
	runInBackground(t, io.Discard, proxyArgs...)
	eventually(t, 15*time.Second, served)
}

// The proxy routes only single labels under --preview-domain: a route
// file host outside it would answer 404 for ever, with nothing to say why.
func TestProxyRefusesRoutesThePreviewDomainNeverServes(t *testing.T) {
	const token = "domain-token-0123456789"
	tests := []struct{ name, routes, want string }{
		{"another domain", "a.preview.test " + token + "\napp.localhost " + token + "\n", "routes:2"},
		{"two labels deep", "a.b.preview.test " + token + "\n", "routes:1"},
		{"a pattern below a label", "*.b.preview.test " + token + "\n", "routes:1"},
		{"the domain itself", "preview.test " + token + "\n", "routes:1"},
		{"a name and a pattern under it", "a.preview.test " + token + "\n*.preview.test " + token + "\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearProxyEnv(t)
			dir := t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			err := run(ctx, []string{"proxy", "--routes", writeTestFile(t, dir, "routes", tt.routes),
				"--dev-ca-file", filepath.Join(dir, "ca.pem"), "--tunnel-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
				"--preview-domain", "Preview.Test."}, io.Discard, io.Discard)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("run = %v, want the proxy to start", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "--preview-domain")):
				t.Fatalf("run = %v, want an error naming %s and --preview-domain", err, tt.want)
			}
		})
	}
}

// A wildcard --expose is shared only if the proxy grants a hostname it
// serves; otherwise the agent says so, as it does for a plain name.
func TestExposeWarnsOfAPatternTheProxyDoesNotGrant(t *testing.T) {
	tests := []struct {
		expose  string
		granted bool
	}{
		{"*.other.example", false},
		{"*.pr.example", true},   // a1.pr.example
		{"*.wild.example", true}, // the same pattern
		{"*", true},
		{"x.wild.example", true},
		{"x.other.example", false},
	}
	addr, caFile := tunnelProxy(t, func(context.Context, string) (tunnel.Identity, error) {
		return tunnel.Identity{Agent: "a", Environment: "e", Hostnames: []string{"a1.pr.example", "*.wild.example"}}, nil
	})
	for _, tt := range tests {
		t.Run(tt.expose, func(t *testing.T) {
			var stdout, stderr syncBuffer
			cfg := agentExposeConfig{expose: exposeFlag{tt.expose: "127.0.0.1:9"}, proxyAddr: addr,
				token: "t", caFile: caFile, logLevel: "info", logFormat: "json"}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); runAgentExpose(ctx, cfg, &stdout, &stderr) }()
			eventually(t, 10*time.Second, func() (bool, string) {
				return strings.Contains(stdout.String(), "->") || strings.Contains(stderr.String(), "does not route"), stderr.String()
			})
			cancel()
			<-done
			if shared := strings.Contains(stdout.String(), tt.expose+" -> "); shared != tt.granted {
				t.Errorf("printed as shared: %v, want %v\nstdout: %s\nlogs: %s", shared, tt.granted, &stdout, &stderr)
			}
			if warned := strings.Contains(stderr.String(), "does not route this hostname"); warned == tt.granted {
				t.Errorf("warned: %v, want %v\nlogs: %s", warned, !tt.granted, &stderr)
			}
		})
	}
}

// Two addresses for one host: the agent says so at start rather than
// serving one of them.
func TestExposeRefusesAHostAtTwoAddresses(t *testing.T) {
	clearAgentEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := run(ctx, []string{"agent", "--expose", "app.localhost=127.0.0.1:3000", "--expose", "APP.localhost.=127.0.0.1:4000",
		"--proxy", "127.0.0.1:1", "--token", "0123456789abcdef"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:3000") || !strings.Contains(err.Error(), "127.0.0.1:4000") {
		t.Fatalf("run = %v, want an error naming both addresses", err)
	}
	// One address twice is no conflict.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if err := run(ctx2, []string{"agent", "--expose", "app.localhost=127.0.0.1:3000,app.localhost=127.0.0.1:3000",
		"--proxy", "127.0.0.1:1", "--token", "0123456789abcdef"}, io.Discard, io.Discard); err != nil {
		t.Fatalf("run = %v with one address twice", err)
	}
}
