package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestAgentCannotServeAnotherEnvironment points B's hostname at A's agent
// in the route table (a stale or poisoned entry): the proxy refuses to
// open a stream for it, and A's service never sees the request.
func TestAgentCannotServeAnotherEnvironment(t *testing.T) {
	n := startNode(t, nodeOpts{})
	var hits atomic.Int64
	be := countingBackend(t, &hits)
	agentFor(t, n, "token-a", be)
	ctx := t.Context()
	tests := []struct {
		name      string
		host, env string
	}{
		{"B's hostname and environment routed to A's agent", hostB, "env-b"},
		{"B's hostname routed to A's agent under A's environment", hostB, "env-a"},
		{"A's environment's route to A's agent for a hostname A was not granted", "c3.preview.test", "env-a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := n.Routes().PutHost(ctx, tt.host, tt.env, idA.Agent, 0); err != nil {
				t.Fatal(err)
			}
			n.res.forgetAgent(idA.Agent, []string{tt.host})
			before := hits.Load()
			status, body := get(t, client(n.public), "http://"+tt.host+"/hello")
			if status != http.StatusBadGateway || !strings.Contains(body, "not reachable") {
				t.Fatalf("got %d %q, want the 502 page", status, body)
			}
			if hits.Load() != before {
				t.Fatal("A's service received a request for a hostname it may not serve")
			}
		})
	}
	// A itself still works.
	if status, _ := get(t, client(n.public), "http://"+hostA+"/hello"); status != 200 {
		t.Fatalf("A's own host: %d", status)
	}
}

func countingBackend(t *testing.T, hits *atomic.Int64) string {
	ln := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.WriteString(w, "hello")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestHopRejectsUnauthenticatedCalls calls a node's internal hop listener
// directly, as an attacker inside the network would.
func TestHopRejectsUnauthenticatedCalls(t *testing.T) {
	n := startNode(t, nodeOpts{multi: true})
	be := backend(t)
	agentFor(t, n, "token-a", be.addr)
	other := &Proxy{cfg: Config{HopSecret: []byte("another-secret-another-secret-another")}}
	tests := []struct {
		name   string
		sign   func(r *http.Request)
		status int
	}{
		{"no signature", func(r *http.Request) {}, 401},
		{"garbage signature", func(r *http.Request) { r.Header.Set(hopHeader, "v1 123 abc") }, 401},
		{"signed with another secret", func(r *http.Request) { r.Header.Set(hopHeader, other.signHop(time.Now(), r)) }, 401},
		{"a signature from ten minutes ago", func(r *http.Request) { r.Header.Set(hopHeader, n.signHop(time.Now().Add(-10*time.Minute), r)) }, 401},
		{"a signature for another path", func(r *http.Request) {
			r2 := r.Clone(r.Context())
			r2.URL.Path = "/other"
			r.Header.Set(hopHeader, n.signHop(time.Now(), r2))
		}, 401},
		{"a signature with forged X-Forwarded-For added after signing", func(r *http.Request) {
			r.Header.Set(hopHeader, n.signHop(time.Now(), r))
			r.Header.Set("X-Forwarded-For", "6.6.6.6")
		}, 401},
		{"a valid signature", func(r *http.Request) { r.Header.Set(hopHeader, n.signHop(time.Now(), r)) }, 200},
	}
	hopClient := hopClient(n.hop, n.hopTLS.client)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "https://"+hostA+"/hello", nil)
			tt.sign(req)
			resp, err := hopClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
		})
	}
}

// TestHopTakesOnlyTLSFromTheSecretsHolders: the hop listener speaks TLS
// only, with a certificate that only holders of the hop secret can make.
func TestHopTakesOnlyTLSFromTheSecretsHolders(t *testing.T) {
	n := startNode(t, nodeOpts{multi: true})
	be := backend(t)
	agentFor(t, n, "token-a", be.addr)

	// Plain HTTP, even signed, never reaches the handler.
	req, _ := http.NewRequest("GET", "http://"+hostA+"/hello", nil)
	req.Header.Set(hopHeader, n.signHop(time.Now(), req))
	resp, err := client(n.hop).Do(req)
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 || strings.Contains(string(body), "hello from") {
			t.Fatalf("plain HTTP served by the hop: %d %q", resp.StatusCode, body)
		}
	}

	// A node with another secret derives another CA: neither side trusts
	// the other.
	other, err := newHopTLS([]byte("another-secret-another-secret-another"))
	if err != nil {
		t.Fatal(err)
	}
	req, _ = http.NewRequest("GET", "https://"+hostA+"/hello", nil)
	if _, err := hopClient(n.hop, other.client).Do(req); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a node with another secret trusted this node's certificate: %v", err)
	}

	// Nodes with the same secret derive the same CA, each with a
	// certificate of its own.
	same, err := newHopTLS(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(same.server.Certificates[0].Certificate[0], n.hopTLS.server.Certificates[0].Certificate[0]) {
		t.Fatal("two nodes share a certificate and key")
	}
	req, _ = http.NewRequest("GET", "https://"+hostA+"/hello", nil)
	req.Header.Set(hopHeader, n.signHop(time.Now(), req))
	resp, err = hopClient(n.hop, same.client).Do(req)
	if err != nil {
		t.Fatalf("a node with the same secret: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("a node with the same secret: status %d", resp.StatusCode)
	}
}

// hopClient dials addr over TLS with tc, as a node's hop transport does.
func hopClient(addr string, tc *tls.Config) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return d.DialContext(ctx, network, addr)
			},
			TLSClientConfig: tc,
		},
		Timeout: time.Minute,
	}
}

func TestSlowAndOversizedHeadersAreCut(t *testing.T) {
	n := startNode(t, nodeOpts{tweak: func(c *Config) {
		c.ReadHeaderTimeout = 300 * time.Millisecond
		c.MaxHeaderBytes = 8 << 10
	}})
	t.Run("a client that trickles its headers is disconnected", func(t *testing.T) {
		c, err := net.Dial("tcp", n.public)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n", hostA)
		for time.Since(start) < 3*time.Second {
			if _, err := fmt.Fprintf(c, "X-Slow: 1\r\n"); err != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		io.ReadAll(c)
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("slow client kept its connection for %v", d)
		}
	})
	t.Run("headers over the limit are refused", func(t *testing.T) {
		c, err := net.Dial("tcp", n.public)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nX-Big: %s\r\n\r\n", hostA, strings.Repeat("x", 64<<10))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("status %d, want 431", resp.StatusCode)
		}
	})
}
