package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// TestRefusedStreamsStayWithinTheMemoryBudget: a malicious agent opens far
// more streams than the proxy's stream cap and fills each with a window of
// data that nothing on the proxy reads. A stream the proxy closed (over
// the cap, of a type it does not serve, or done with) lingers in yamux,
// which buffers what the agent still sends, until the agent's FIN or the
// close timeout. MemoryBudget promises that a session holds no more than
// the budget in receive buffers, whatever its agent does.
func TestRefusedStreamsStayWithinTheMemoryBudget(t *testing.T) {
	const window = 1 << 20
	cfg := fastTunnel()
	cfg.MaxStreamWindow = window
	cfg.MemoryBudget = 4 * window // cap 4
	// Streams not yet accepted hold yamux's initial window (256 KiB)
	// each, a cost of the accept backlog, not of the budget: keep it small.
	cfg.AcceptBacklog = 4
	ts := startServer(t, ServerConfig{Tunnel: cfg}) // no Control: every control stream is closed at once
	raw := fakeAgentSession(t, ts, cfg)
	waitSession(t, ts, idA.Agent, 0)

	// The agent opens streams as fast as the proxy lets it, for a while,
	// and fills each; it never closes one. What it manages to write, the
	// proxy holds: yamux's flow control lets it send only what the proxy
	// granted, and nothing on the proxy reads these streams.
	var held atomic.Int64
	body := make([]byte, window-2)
	go func() {
		for range 48 {
			st, err := raw.mux.OpenStream()
			if err != nil {
				return
			}
			go func() {
				_ = st.SetWriteDeadline(time.Now().Add(time.Second))
				_ = writeStreamHeader(st, StreamControl, "")
				n, _ := st.Write(body)
				held.Add(int64(2 + n))
			}()
		}
	}()
	time.Sleep(1500 * time.Millisecond)

	// The budget, plus the window of the stream being refused and of the
	// one accepted behind it, plus yamux's initial window for each stream
	// waiting in the backlog.
	limit := cfg.MemoryBudget + 2*window + int64(cfg.AcceptBacklog)*256<<10
	if got := held.Load(); got > limit {
		t.Fatalf("the proxy holds %d MiB for one session whose agent filled the streams it closed, over its budget of %d MiB (limit %d MiB with the backlog)",
			got>>20, cfg.MemoryBudget>>20, limit>>20)
	}
}

// fakeAgentSession completes the handshake as agent A and returns its raw
// yamux session, so a test can act as an agent that breaks the rules.
func fakeAgentSession(t *testing.T, ts *testServer, cfg Config) *agentSession {
	t.Helper()
	a, err := NewAgent(AgentConfig{Addr: ts.addr, Token: "token-a", Handler: echoHandler(),
		TLS: &tls.Config{RootCAs: ts.ca.Pool()}, Tunnel: cfg})
	if err != nil {
		t.Fatal(err)
	}
	s, err := a.connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.mux.Close() })
	return s
}

// TestOverCapStreamsAreRefusedOneByOne: an agent over the proxy's stream
// cap has each new stream closed at once (it reads EOF), however many it
// opens, as long as it closes them; once a slot is free, its next stream
// is served.
func TestOverCapStreamsAreRefusedOneByOne(t *testing.T) {
	cfg := fastTunnel()
	cfg.MemoryBudget = int64(cfg.MaxStreamWindow) // cap 1
	echo := ControlHandlerFunc(func(_ context.Context, _ Identity, _ string, c net.Conn) {
		defer c.Close()
		io.Copy(c, c)
	})
	ts := startServer(t, ServerConfig{Tunnel: cfg, Control: echo})
	a := startAgent(t, ts, "token-a", echoHandler())
	held := openEcho(t, a) // takes the only slot
	for i := range 3 {
		c, err := a.OpenControl(ctxT(t, time.Second), "x")
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("hi\n"))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("stream %d over the cap: read %v, want EOF", i+1, err)
		}
		c.Close()
	}
	held.Close()
	deadline := time.Now().Add(2 * time.Second)
	for {
		c, err := a.OpenControl(ctxT(t, time.Second), "x")
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		c.Write([]byte("hi\n"))
		_, err = c.Read(make([]byte, 1))
		c.Close()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no stream served after the slot was freed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// openEcho opens a control stream and waits for the proxy's echo on it.
func openEcho(t *testing.T, a *testAgent) net.Conn {
	t.Helper()
	c, err := a.OpenControl(ctxT(t, 2*time.Second), "x")
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hi\n"))
	if got := readLine(t, c); got != "hi" {
		t.Fatalf("echo = %q", got)
	}
	return c
}
