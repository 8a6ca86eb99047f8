package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/stagely-dev/stagely/agent/protocol"
	"github.com/stagely-dev/stagely/tunnel"
)

// tunnelProxy is a tunnel listener whose agents get the identity auth
// gives their token; it returns its address and its CA's file.
func tunnelProxy(t *testing.T, auth tunnel.AuthenticatorFunc) (addr, caFile string) {
	t.Helper()
	ca, err := tunnel.NewDevCA()
	if err != nil {
		t.Fatal(err)
	}
	tc, err := ca.ServerConfig("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := tunnel.NewServer(tunnel.ServerConfig{TLS: tc, Authenticator: auth})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), ln)
	t.Cleanup(srv.Close)
	return ln.Addr().String(), writeTestFile(t, t.TempDir(), "ca.pem", string(ca.PEM))
}

// A machine whose environment was destroyed has tokens the proxy refuses
// for good: its agent must stop and say so, not wait or retry for ever.
func TestManagedAgentStopsWhenTheProxyRefusesItsToken(t *testing.T) {
	addr, caFile := tunnelProxy(t, func(context.Context, string) (tunnel.Identity, error) {
		return tunnel.Identity{}, tunnel.ErrBadToken
	})
	tests := []struct {
		name  string
		files map[string]string // under the machine's directory
	}{
		{"bootstrap token, before the exchange", map[string]string{"bootstrap-token": "stg_boot\n"}},
		{"agent token, after the exchange", map[string]string{"state/agent-token": "revoked\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.MkdirAll(filepath.Join(dir, "state"), 0o700); err != nil {
				t.Fatal(err)
			}
			for name, content := range tt.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cfg := agentExposeConfig{proxyAddr: addr, caFile: caFile,
				bootstrapFile: filepath.Join(dir, "bootstrap-token"), stateDir: filepath.Join(dir, "state")}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := runManagedAgent(ctx, cfg, zerolog.Nop())
			if !errors.Is(err, tunnel.ErrRefused) || ctx.Err() != nil {
				t.Fatalf("runManagedAgent = %v (context: %v); want the proxy's refusal, before the context ends", err, ctx.Err())
			}
		})
	}
}

func TestExposeWarnsOnlyOfGrantedHostsItDoesNotServe(t *testing.T) {
	addr, caFile := tunnelProxy(t, func(context.Context, string) (tunnel.Identity, error) {
		return tunnel.Identity{Agent: "a", Environment: "e", Hostnames: []string{"a1.pr.example", "other.example"}}, nil
	})
	var stdout, stderr syncBuffer
	cfg := agentExposeConfig{expose: exposeFlag{"*.pr.example": "127.0.0.1:9"}, proxyAddr: addr,
		token: "t", caFile: caFile, logLevel: "info", logFormat: "json"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	runAgentExpose(ctx, cfg, &stdout, &stderr)
	logs := stderr.String()
	if !strings.Contains(logs, "connected to the proxy") {
		t.Fatalf("the agent never connected:\n%s", logs)
	}
	warned := func(host string) bool {
		for line := range strings.Lines(logs) {
			if strings.Contains(line, "nothing is exposed for it") && strings.Contains(line, `"`+host+`"`) {
				return true
			}
		}
		return false
	}
	if warned("a1.pr.example") {
		t.Errorf("warned of a1.pr.example, which *.pr.example serves:\n%s", logs)
	}
	if !warned("other.example") {
		t.Errorf("no warning for other.example, which nothing serves:\n%s", logs)
	}
}

func TestTheAgentRenewsWhenItsGrantsAndItsPreviewsDiffer(t *testing.T) {
	deploy := func(hosts ...string) *protocol.Deployment {
		d := &protocol.Deployment{Action: protocol.ActionDeploy}
		for _, h := range hosts {
			d.Previews = append(d.Previews, protocol.Preview{Host: h})
		}
		return d
	}
	const web, api = "h1.preview.test", "h1-api.preview.test"
	tests := []struct {
		name   string
		grants []string
		d      *protocol.Deployment
		host   string
		why    string
	}{
		{"same", []string{web, api}, deploy(api, web), "", ""},
		{"a preview added", []string{web}, deploy(web, api), api, "adds"},
		{"a preview dropped", []string{web, api}, deploy(web), api, "drops"},
		{"a destroy", []string{web, api}, &protocol.Deployment{Action: protocol.ActionDestroy}, "", ""},
		{"no grants yet", nil, deploy(web), web, "adds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host, why := grantsDiffer(tt.grants, tt.d)
			if host != tt.host || why != tt.why {
				t.Errorf("grantsDiffer = %q, %q; want %q, %q", host, why, tt.host, tt.why)
			}
		})
	}
}
