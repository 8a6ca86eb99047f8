package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// handRolledProxy is a tunnel listener whose side of each connection,
// after TLS and the agent's hello, is serve: a proxy that misbehaves as
// no Server of this package does.
func handRolledProxy(t *testing.T, serve func(c *tls.Conn)) (addr string, ca *DevCA) {
	t.Helper()
	ca, err := NewDevCA()
	if err != nil {
		t.Fatal(err)
	}
	tc, err := ca.ServerConfig("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s := tls.Server(c, tc)
				if _, _, err := readHello(s); err != nil {
					return
				}
				serve(s)
			}()
		}
	}()
	return ln.Addr().String(), ca
}

func TestAgentStopsAtOnceWhileTheProxyAuthenticates(t *testing.T) {
	heard := make(chan struct{}, 4)
	addr, ca := handRolledProxy(t, func(c *tls.Conn) {
		heard <- struct{}{}
		io.Copy(io.Discard, c) // still checking the token: no answer yet
	})
	a, err := NewAgent(AgentConfig{Addr: addr, Token: "token-a", TLS: &tls.Config{RootCAs: ca.Pool()}, Handler: echoHandler()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case <-heard:
	case <-time.After(5 * time.Second):
		t.Fatal("the agent never said hello")
	}
	cancel()
	start := time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil once its context ends", err)
		}
	case <-time.After(time.Second):
		<-done
		t.Fatalf("Run returned %v after its context ended (the handshake timeout), want at once", time.Since(start).Round(100*time.Millisecond))
	}
}

func TestAgentBacksOffAProxyThatSaysGoAwayAtOnce(t *testing.T) {
	var sessions atomic.Int64
	addr, ca := handRolledProxy(t, func(c *tls.Conn) {
		if writeAnswer(c, statusAccepted, Welcome{Agent: idA.Agent, Hostnames: idA.Hostnames}) != nil {
			return
		}
		sessions.Add(1)
		mux, err := yamux.Server(c, DefaultConfig().yamuxConfig())
		if err != nil {
			return
		}
		defer mux.Close()
		if st, err := mux.OpenStream(); err == nil {
			writeStreamHeader(st, StreamGoAway, "draining")
			st.Close()
		}
		mux.GoAway()
		<-mux.CloseChan()
	})
	a, err := NewAgent(AgentConfig{Addr: addr, Token: "token-a", TLS: &tls.Config{RootCAs: ca.Pool()}, Handler: echoHandler(),
		Backoff: Backoff{Min: 100 * time.Millisecond, Max: time.Second, Stable: time.Minute}, DrainTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	a.Run(ctx)
	// Delays of at least 50, 100, 200, 400 and 500 ms (each drawn from the
	// upper half of its step) fit at most about six sessions in 2 s.
	if n := sessions.Load(); n < 2 || n > 8 {
		t.Fatalf("the agent opened %d sessions in 2 s with a proxy that says goaway to each: want a few, backed off", n)
	}
}

func TestAgentServesStreamsWhileOnConnectRuns(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	startAgent(t, ts, "token-a", echoHandler(), func(c *AgentConfig) {
		c.OnConnect = func(Welcome) { time.Sleep(3 * time.Second) } // a terminal that does not take the line
	})
	sess := waitSession(t, ts, idA.Agent, 0)
	c, err := sess.OpenPreview(ctxT(t, 5*time.Second), "a.preview.test")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got := readLine(t, c); got != "a.preview.test" {
		t.Fatalf("stream answered %q", got)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("the stream was answered after %v: the accept loop waited for OnConnect", took.Round(100*time.Millisecond))
	}
}

func TestAgentClosesADrainedSessionAfterGoAway(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	startAgent(t, ts, "token-a", echoHandler(), func(c *AgentConfig) { c.DrainTimeout = time.Minute })
	sess := waitSession(t, ts, idA.Agent, 0)
	c, err := sess.OpenPreview(ctxT(t, 5*time.Second), "a.preview.test")
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	readLine(t, c)
	// As in Shutdown, this node takes no new session: the agent's
	// reconnect goes elsewhere, and the old session is left to drain.
	ts.ln.Close()
	if err := sess.GoAway("test"); err != nil {
		t.Fatal(err)
	}
	// While a stream is open the old session stays.
	select {
	case <-sess.Done():
		t.Fatal("the agent closed a session whose stream was still open")
	case <-time.After(3 * drainPoll):
	}
	c.Close()
	select {
	case <-sess.Done():
	case <-time.After(3 * time.Second):
		t.Fatalf("3 s after its last stream ended (drain timeout 1 min), the agent still holds the old session")
	}
}

func TestPipeEndsWhenTheProxyClosedAndTheServiceIsSilent(t *testing.T) {
	svc, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	conns := make(chan net.Conn, 1)
	go func() {
		if c, err := svc.Accept(); err == nil {
			conns <- c
		}
	}()
	tun := fastTunnel()
	tun.StreamCloseTimeout = 300 * time.Millisecond
	ts := startServer(t, ServerConfig{Tunnel: tun})
	ag := startAgent(t, ts, "token-a", &Forward{Targets: map[string]string{"a.preview.test": svc.Addr().String()}},
		func(c *AgentConfig) { c.Tunnel = tun })
	sess := waitSession(t, ts, idA.Agent, 0)
	c, err := sess.OpenPreview(ctxT(t, 5*time.Second), "a.preview.test")
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a.preview.test\r\n\r\n")
	var sc net.Conn
	select {
	case sc = <-conns:
		defer sc.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the service was not dialled")
	}
	c.Close() // the client went away
	// The service reads to EOF and keeps its end open without a word.
	sc.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadAll(sc); err != nil {
		t.Fatalf("the service did not see the request end: %v", err)
	}
	s, _ := ag.current()
	deadline := time.Now().Add(3 * time.Second)
	for len(s.slots) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("3 s after the proxy closed the stream (close timeout 300 ms) the agent still holds %d stream slot(s)", len(s.slots))
		}
		time.Sleep(20 * time.Millisecond)
	}
	sc.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := sc.Write([]byte("late")); err == nil {
		if _, err := sc.Read(make([]byte, 1)); err == nil {
			t.Fatal("the service's connection is still open")
		}
	}
}

// TestAgentStopsTheServiceWhenTheProxyClosesAStream: a visitor who starts
// a large download and hangs up makes the proxy close the stream. The
// service goes on writing; what the agent would forward could only wait in
// the proxy's memory until its close timeout, in a window that no stream
// slot accounts for any more, so that visitors repeating it could exhaust
// the proxy. The agent closes the service's connection at once instead.
func TestAgentStopsTheServiceWhenTheProxyClosesAStream(t *testing.T) {
	svc, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	stopped := make(chan time.Time, 1)
	go func() {
		c, err := svc.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		// An endless download that heeds nothing but a failed write.
		chunk := make([]byte, 32<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				stopped <- time.Now()
				return
			}
		}
	}()
	tun := fastTunnel()
	tun.StreamCloseTimeout = 30 * time.Second
	ts := startServer(t, ServerConfig{Tunnel: tun})
	startAgent(t, ts, "token-a", &Forward{Targets: map[string]string{"a.preview.test": svc.Addr().String()}},
		func(c *AgentConfig) { c.Tunnel = tun })
	sess := waitSession(t, ts, idA.Agent, 0)
	c, err := sess.OpenPreview(ctxT(t, 5*time.Second), "a.preview.test")
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: a.preview.test\r\n\r\n")
	if _, err := io.ReadFull(c, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	closed := time.Now()
	c.Close() // the visitor went away
	select {
	case at := <-stopped:
		t.Logf("the service's write failed %s after the proxy closed the stream", at.Sub(closed))
	case <-time.After(3 * time.Second):
		t.Fatal("3 s after the proxy closed the stream (close timeout 30 s) the service was still sending into it")
	}
}

// grantsAuth is an Authenticator whose grants can change, as a server's
// do when a deployment adds a preview.
type grantsAuth struct {
	mu    sync.Mutex
	hosts []string
	// answered, if set, is told of each identity given.
	answered chan []string
}

func (g *grantsAuth) Authenticate(_ context.Context, token string) (Identity, error) {
	if token != "token-a" {
		return Identity{}, ErrBadToken
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.answered != nil {
		g.answered <- slices.Clone(g.hosts)
	}
	return Identity{Agent: idA.Agent, Environment: idA.Environment, Hostnames: slices.Clone(g.hosts)}, nil
}

func (g *grantsAuth) grant(hosts ...string) {
	g.mu.Lock()
	g.hosts = hosts
	g.mu.Unlock()
}

func TestAgentRenewTakesUpHostnamesGrantedSince(t *testing.T) {
	auth := &grantsAuth{hosts: []string{"a.preview.test"}}
	ts := startServer(t, ServerConfig{Authenticator: auth})
	ta := startAgent(t, ts, "token-a", echoHandler())
	old := waitSession(t, ts, idA.Agent, 0)
	if _, err := old.OpenPreview(ctxT(t, 5*time.Second), "a-api.preview.test"); !errors.Is(err, ErrHostnameNotAllowed) {
		t.Fatalf("a hostname not granted yet: %v, want ErrHostnameNotAllowed", err)
	}

	auth.grant("a.preview.test", "a-api.preview.test")
	ta.Renew()
	sess := waitSession(t, ts, idA.Agent, old.Generation())
	for _, host := range []string{"a.preview.test", "a-api.preview.test"} {
		c, err := sess.OpenPreview(ctxT(t, 5*time.Second), host)
		if err != nil {
			t.Fatalf("%s on the renewed session: %v", host, err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if got := readLine(t, c); got != host {
			t.Errorf("stream for %s answered %q", host, got)
		}
		c.Close()
	}
	if wel, ok := ta.Welcome(); !ok || !slices.Contains(wel.Hostnames, "a-api.preview.test") {
		t.Errorf("the agent's welcome after renewing: %+v (%v)", wel, ok)
	}
	select {
	case <-old.Done():
	case <-time.After(3 * time.Second):
		t.Error("the old session is still open 3 s after the renew")
	}
}

// A Renew while a session is being made (its grants already given, the
// agent not yet told) must not be lost: that session's grants predate it.
func TestAgentRenewDuringAHandshakeIsNotLost(t *testing.T) {
	auth := &grantsAuth{hosts: []string{"a.preview.test"}, answered: make(chan []string, 16)}
	ts := startServer(t, ServerConfig{Authenticator: auth})
	ta := startAgent(t, ts, "token-a", echoHandler())
	<-auth.answered // the proxy has its grants; the agent is not told yet
	auth.grant("a.preview.test", "a-api.preview.test")
	ta.Renew()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if s, ok := ts.Lookup(idA.Agent); ok && s.Identity().Allows("a-api.preview.test") {
			return
		}
		if time.Now().After(deadline) {
			wel, _ := ta.Welcome()
			t.Fatalf("5 s after a Renew during the handshake, the agent's grants are %v", wel.Hostnames)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
