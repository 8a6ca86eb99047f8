package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestAgentKilledGives502Fast kills the agent's process in the middle of
// a request: the request in flight and the next ones get the 502 page
// within a second, not a hang.
func TestAgentKilledGives502Fast(t *testing.T) {
	n := startNode(t, nodeOpts{})
	be := backend(t)
	ap := startAgentProcess(t, n, "token-a", be.addr)
	c := client(n.public)
	if status, _ := get(t, c, "http://"+hostA+"/hello"); status != 200 {
		t.Fatalf("before the kill: %d", status)
	}
	inflight := make(chan int, 1)
	go func() {
		resp, err := c.Get("http://" + hostA + "/slow?ms=5000")
		if err != nil {
			inflight <- -1
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		inflight <- resp.StatusCode
	}()
	time.Sleep(200 * time.Millisecond)
	killed := time.Now()
	ap.kill()
	select {
	case status := <-inflight:
		if status != http.StatusBadGateway {
			t.Fatalf("request in flight when the agent died: %d, want 502", status)
		}
		if d := time.Since(killed); d > time.Second {
			t.Fatalf("request in flight answered %v after the kill", d)
		}
	case <-time.After(time.Second):
		t.Fatal("request in flight still hanging 1s after the agent died")
	}
	start := time.Now()
	status, body := get(t, c, "http://"+hostA+"/hello")
	if status != http.StatusBadGateway || !strings.Contains(body, "not reachable right now") {
		t.Fatalf("after the kill: %d %q, want the 502 page", status, body)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("502 took %v", d)
	}
}

// TestAgentReconnectMakesRouteLiveFast restarts a killed agent: its host
// serves again within 2 s of the new session.
func TestAgentReconnectMakesRouteLiveFast(t *testing.T) {
	n := startNode(t, nodeOpts{})
	be := backend(t)
	ap := startAgentProcess(t, n, "token-a", be.addr)
	c := client(n.public)
	get(t, c, "http://"+hostA+"/hello")
	ap.kill()
	if status, _ := get(t, c, "http://"+hostA+"/hello"); status != http.StatusBadGateway {
		t.Fatalf("while the agent is gone: %d", status)
	}
	startAgentProcess(t, n, "token-a", be.addr) // returns once connected
	connected := time.Now()
	for {
		status, _ := get(t, c, "http://"+hostA+"/hello")
		if status == 200 {
			break
		}
		if time.Since(connected) > 2*time.Second {
			t.Fatalf("route still not live 2s after the agent reconnected (last status %d)", status)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("live %v after the reconnect", time.Since(connected))
}

// TestProxyRestartAgentsReconnect stops a proxy and starts a new one on
// the same tunnel address: the agent finds it without help.
func TestProxyRestartAgentsReconnect(t *testing.T) {
	routes := NewMemory()
	n := startNode(t, nodeOpts{routes: routes})
	be := backend(t)
	agentFor(t, n, "token-a", be.addr)
	if status, _ := get(t, client(n.public), "http://"+hostA+"/hello"); status != 200 {
		t.Fatal(status)
	}
	n.Close()
	ln, err := listenOn(n.tunnel)
	if err != nil {
		t.Fatal(err)
	}
	n2 := startNode(t, nodeOpts{ca: n.ca, tunnelLn: ln, routes: routes})
	c := client(n2.public)
	deadline := time.Now().Add(5 * time.Second)
	for {
		status, _ := get(t, c, "http://"+hostA+"/hello")
		if status == 200 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not back 5s after the proxy restarted (status %d)", status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestShutdownDrainsInFlightRequests shuts a proxy down while a slow
// request is in flight: it completes; the agent is told to go away.
func TestShutdownDrainsInFlightRequests(t *testing.T) {
	n := startNode(t, nodeOpts{})
	be := backend(t)
	reconnects := make(chan struct{}, 8)
	a := agentFor(t, n, "token-a", be.addr)
	_ = a
	c := client(n.public)
	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := c.Get("http://" + hostA + "/slow?ms=700")
		if err != nil {
			done <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{status: resp.StatusCode, body: string(b)}
	}()
	time.Sleep(200 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	r := <-done
	if r.err != nil || r.status != 200 || r.body != "slow done" {
		t.Fatalf("request in flight during shutdown: %d %q %v", r.status, r.body, r.err)
	}
	// After the GoAway the agent no longer has this session.
	if _, ok := a.Welcome(); ok {
		t.Fatal("agent still holds the drained session")
	}
	_ = reconnects
}

// TestABusyPreviewAnswers503: when long-lived requests hold every stream
// of a preview's session, the next visitor is served as soon as one ends,
// or gets the busy page after Config.SlotWait, not a page that never
// loads.
func TestABusyPreviewAnswers503(t *testing.T) {
	for _, tt := range []struct {
		name     string
		slotWait time.Duration
		want     int
		within   time.Duration // of the request's start
	}{
		// The held requests end after 3 s; their streams go back to the
		// pool, which must not keep them from the waiting request.
		{"served once a stream is free", 10 * time.Second, http.StatusOK, 5 * time.Second},
		{"busy past the slot wait", 300 * time.Millisecond, http.StatusServiceUnavailable, 2 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := startNode(t, nodeOpts{tweak: func(c *Config) {
				c.Tunnel.MaxStreams = 2
				c.SlotWait = tt.slotWait
			}})
			agentFor(t, n, "token-a", backend(t).addr)
			c := client(n.public)
			held := make(chan int, 2)
			for range 2 {
				go func() {
					resp, err := c.Get("http://" + hostA + "/slow?ms=3000")
					if err != nil {
						held <- -1
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					held <- resp.StatusCode
				}()
			}
			time.Sleep(300 * time.Millisecond) // both streams are open
			start := time.Now()
			resp, err := c.Get("http://" + hostA + "/hello")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			took := time.Since(start)
			if resp.StatusCode != tt.want || took > tt.within {
				t.Fatalf("a request while every stream is held: %d after %s:\n%.300s\nwant %d within %s",
					resp.StatusCode, took, body, tt.want, tt.within)
			}
			if tt.want == http.StatusServiceUnavailable &&
				(!strings.Contains(string(body), "Preview busy") || resp.Header.Get("Retry-After") == "") {
				t.Errorf("the busy answer has no busy page or no Retry-After:\n%.300s", body)
			}
			for range 2 {
				if status := <-held; status != 200 {
					t.Fatalf("a request that held a stream: %d", status)
				}
			}
		})
	}
}

// TestABusyPreviewLeavesOthersPooledStreams: a request waiting for a busy
// preview's stream drops that preview's idle pooled streams, which hold
// its slots, but not those of other previews, which would then pay for a
// new stream and a new connection to their service on every request.
func TestABusyPreviewLeavesOthersPooledStreams(t *testing.T) {
	n := startNode(t, nodeOpts{tweak: func(c *Config) {
		c.Tunnel.MaxStreams = 2
		c.SlotWait = 300 * time.Millisecond
	}})
	agentFor(t, n, "token-a", backend(t).addr)
	var dials atomic.Int32
	ln := listen(t)
	srv := &http.Server{
		Handler: backendMux(newSumStore()),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				dials.Add(1)
			}
		},
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	agentFor(t, n, "token-b", ln.Addr().String())
	c := client(n.public)
	if status, _ := get(t, c, "http://"+hostB+"/hello"); status != 200 {
		t.Fatalf("preview b: %d", status)
	}
	held := make(chan struct{}, 2)
	for range 2 {
		go func() {
			defer func() { held <- struct{}{} }()
			if resp, err := c.Get("http://" + hostA + "/slow?ms=1500"); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	if status, _ := get(t, c, "http://"+hostA+"/hello"); status != http.StatusServiceUnavailable {
		t.Fatalf("preview a while busy: %d, want 503", status)
	}
	if status, _ := get(t, c, "http://"+hostB+"/hello"); status != 200 {
		t.Fatalf("preview b: %d", status)
	}
	if d := dials.Load(); d != 1 {
		t.Errorf("preview b's service was dialled %d times for two requests; its pooled stream was dropped for preview a", d)
	}
	<-held
	<-held
}
