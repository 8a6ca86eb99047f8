package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/stagely-dev/stagely/tunnel"
)

// TestControlStreamsReachTheHook opens a control stream from the agent:
// the proxy hands it, with the agent's authenticated identity, to the
// configured handler (the server's relay in production).
func TestControlStreamsReachTheHook(t *testing.T) {
	seen := make(chan tunnel.Identity, 1)
	n := startNode(t, nodeOpts{tweak: func(c *Config) {
		c.Control = tunnel.ControlHandlerFunc(func(_ context.Context, id tunnel.Identity, channel string, conn net.Conn) {
			defer conn.Close()
			seen <- id
			io.WriteString(conn, "relayed "+channel)
		})
	}})
	be := backend(t)
	a := agentFor(t, n, "token-a", be.addr)
	c, err := a.OpenControl(ctxTimeout(t, 5e9), "agent-api")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "relayed agent-api" {
		t.Fatalf("reply %q", got)
	}
	if id := <-seen; id.Agent != idA.Agent || id.Environment != idA.Environment {
		t.Fatalf("handler saw %+v", id)
	}
}

// TestHasRouteAnswersTheCertificateDecision checks the question the
// on-demand certificate DecisionFunc asks.
func TestHasRouteAnswersTheCertificateDecision(t *testing.T) {
	n := startNode(t, nodeOpts{})
	be := backend(t)
	agentFor(t, n, "token-a", be.addr)
	n.Routes().PutHost(t.Context(), "idle.preview.test", "env-x", "agent-x", 0)
	tests := []struct {
		host string
		live bool
	}{
		{hostA, true},
		{"idle.preview.test", false}, // known, but its agent is not connected
		{"unknown.preview.test", false},
		{"a1.other.test", false},
	}
	for _, tt := range tests {
		err := n.HasRoute(t.Context(), tt.host)
		if (err == nil) != tt.live {
			t.Errorf("HasRoute(%s) = %v, want live=%v", tt.host, err, tt.live)
		}
		if err != nil && !errors.Is(err, ErrNoRoute) {
			t.Errorf("HasRoute(%s) = %v, want ErrNoRoute", tt.host, err)
		}
	}
}
