package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

func TestPreviewStreams(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	startAgent(t, ts, "token-a", echoHandler())
	sess := waitSession(t, ts, idA.Agent, 0)
	tests := []struct {
		name    string
		host    string
		wantErr error
	}{
		{"an exact granted hostname is served", "a.preview.test", nil},
		{"a single label under a granted wildcard is served", "x1.a-wild.preview.test", nil},
		{"two labels under a granted wildcard are refused", "x.y.a-wild.preview.test", ErrHostnameNotAllowed},
		{"another environment's hostname is refused", "b.preview.test", ErrHostnameNotAllowed},
		{"the wildcard's parent itself is refused", "a-wild.preview.test", ErrHostnameNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := sess.OpenPreview(ctxT(t, 5*time.Second), tt.host)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("OpenPreview(%s) = %v, want %v", tt.host, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			defer c.Close()
			if _, err := io.WriteString(c, "ping\n"); err != nil {
				t.Fatal(err)
			}
			if got := readLine(t, c); got != tt.host {
				t.Fatalf("agent saw hostname %q, want %q", got, tt.host)
			}
			if got := readLine(t, c); got != "ping" {
				t.Fatalf("echo = %q", got)
			}
		})
	}
}

func TestAgentRefusesHostnameItWasNotGranted(t *testing.T) {
	// A proxy that skipped its own check would still be refused by the
	// agent: open a raw stream past Session.OpenPreview's check.
	ts := startServer(t, ServerConfig{})
	served := make(chan string, 1)
	startAgent(t, ts, "token-a", StreamHandlerFunc(func(_ context.Context, host string, c net.Conn) {
		served <- host
		c.Close()
	}))
	sess := waitSession(t, ts, idA.Agent, 0)
	st, err := sess.mux.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if err := writeStreamHeader(st, StreamPreview, "b.preview.test"); err != nil {
		t.Fatal(err)
	}
	st.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := st.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read = %v, want EOF (stream closed by agent)", err)
	}
	select {
	case h := <-served:
		t.Fatalf("agent served %s, which it was not granted", h)
	default:
	}
}

func TestControlStreamsReachTheHandlerWithIdentity(t *testing.T) {
	type call struct {
		id      Identity
		channel string
		body    string
	}
	calls := make(chan call, 1)
	ts := startServer(t, ServerConfig{Control: ControlHandlerFunc(func(_ context.Context, id Identity, ch string, c net.Conn) {
		defer c.Close()
		b := make([]byte, 5)
		io.ReadFull(c, b)
		io.WriteString(c, "pong:"+string(b))
		calls <- call{id, ch, string(b)}
	})})
	a := startAgent(t, ts, "token-a", echoHandler())
	c, err := a.OpenControl(ctxT(t, 5*time.Second), "agent-api")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "hello")
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "pong:hello" {
		t.Fatalf("reply = %q, %v", got, err)
	}
	cl := <-calls
	if cl.id.Agent != idA.Agent || cl.id.Environment != idA.Environment || cl.channel != "agent-api" || cl.body != "hello" {
		t.Fatalf("handler saw %+v", cl)
	}
}

func TestReconnectReplacesSessionAndOldEndRemovesNothing(t *testing.T) {
	var ev events
	cfg := ServerConfig{}
	ev.hooks(&cfg)
	ts := startServer(t, cfg)
	a := startAgent(t, ts, "token-a", echoHandler())
	first := waitSession(t, ts, idA.Agent, 0)
	// Cut the agent's connection under it: it reconnects on its own.
	first.mux.Close()
	second := waitSession(t, ts, idA.Agent, first.Generation())
	if second.Generation() <= first.Generation() {
		t.Fatalf("generation %d not after %d", second.Generation(), first.Generation())
	}
	// The old session's end, even if it arrives late, removes nothing.
	ts.sessionEnded(first)
	if cur, ok := ts.Lookup(idA.Agent); !ok || cur != second {
		t.Fatal("ending the old session removed the new one")
	}
	if _, err := a.WaitConnected(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	c, err := second.OpenPreview(ctxT(t, 5*time.Second), "a.preview.test")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestRegistryKeepsNewestGeneration(t *testing.T) {
	r := newRegistry()
	g1, g2 := r.nextGeneration(), r.nextGeneration()
	if g2 <= g1 {
		t.Fatalf("generations %d, %d do not grow", g1, g2)
	}
	old := &Session{id: idA, gen: g1}
	fresh := &Session{id: idA, gen: g2}
	if replaced := r.add(fresh); replaced != nil {
		t.Fatal("first add replaced something")
	}
	if replaced := r.add(old); replaced != old {
		t.Fatal("an older session displaced a newer one")
	}
	if r.remove(old) {
		t.Fatal("removing the old session removed the current one")
	}
	if r.lookup(idA.Agent) != fresh {
		t.Fatal("current session lost")
	}
	if !r.remove(fresh) || r.lookup(idA.Agent) != nil {
		t.Fatal("current session not removed")
	}
}

func TestStreamCapWaitsForASlot(t *testing.T) {
	cfg := fastTunnel()
	cfg.MaxStreamWindow = 1 << 20
	cfg.MemoryBudget = 2 << 20 // two full windows: cap 2
	if got := cfg.StreamCap(); got != 2 {
		t.Fatalf("StreamCap = %d, want 2", got)
	}
	ts := startServer(t, ServerConfig{Tunnel: cfg})
	startAgent(t, ts, "token-a", echoHandler())
	sess := waitSession(t, ts, idA.Agent, 0)
	c1, err := sess.OpenPreview(ctxT(t, time.Second), "a.preview.test")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := sess.OpenPreview(ctxT(t, time.Second), "a.preview.test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.OpenPreview(ctxT(t, 100*time.Millisecond), "a.preview.test"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("third stream over the cap: %v, want to wait until the deadline", err)
	}
	c1.Close()
	c3, err := sess.OpenPreview(ctxT(t, time.Second), "a.preview.test")
	if err != nil {
		t.Fatalf("stream after one closed: %v", err)
	}
	c2.Close()
	c3.Close()
}

func TestHeartbeatEndsASessionWhosePeerIsSilent(t *testing.T) {
	var ev events
	cfg := ServerConfig{}
	ev.hooks(&cfg)
	ts := startServer(t, cfg)
	// A fake agent: completes the handshake and yamux, then never reads.
	raw, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	fc := &frozenConn{Conn: raw, thaw: make(chan struct{})}
	a, err := NewAgent(AgentConfig{Addr: ts.addr, Token: "token-a", Handler: echoHandler(), TLS: &tls.Config{RootCAs: ts.ca.Pool()},
		Dial: func(context.Context, string, string) (net.Conn, error) { return fc, nil }})
	if err != nil {
		t.Fatal(err)
	}
	s, err := a.connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer s.mux.Close()
	waitSession(t, ts, idA.Agent, 0)
	// Freeze: the fake agent stops reading, so pings go unanswered.
	fc.frozen.Store(true)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, ok := ts.Lookup(idA.Agent); !ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("silent agent's session still registered after 5s (keep-alive 500ms, write timeout 500ms)")
}

func TestShutdownSendsGoAwayAndDrains(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	reconnected := make(chan struct{}, 8)
	a := startAgent(t, ts, "token-a", echoHandler(), func(c *AgentConfig) {
		c.OnConnect = func(Welcome) { reconnected <- struct{}{} }
	})
	<-reconnected
	sess := waitSession(t, ts, idA.Agent, 0)
	c, err := sess.OpenPreview(ctxT(t, 5*time.Second), "a.preview.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, c); got != "a.preview.test" {
		t.Fatal(got)
	}
	shut := make(chan error, 1)
	go func() { shut <- ts.Shutdown(ctxT(t, 5*time.Second), "test shutdown") }()
	// The agent hears the goaway and stops using the session for new work.
	deadline := time.Now().Add(3 * time.Second)
	for {
		if _, ok := a.Welcome(); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("agent did not drop its session after goaway")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := sess.OpenPreview(ctxT(t, time.Second), "a.preview.test"); !errors.Is(err, ErrGoingAway) {
		t.Fatalf("new stream during drain: %v, want ErrGoingAway", err)
	}
	// The stream in flight still works.
	io.WriteString(c, "still here\n")
	if got := readLine(t, c); got != "still here" {
		t.Fatalf("in-flight stream during drain: %q", got)
	}
	select {
	case err := <-shut:
		t.Fatalf("shutdown returned %v with a stream open", err)
	case <-time.After(100 * time.Millisecond):
	}
	c.Close()
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

func TestHostAllowed(t *testing.T) {
	patterns := []string{"abc.preview.example", "*.pr-7.preview.example"}
	tests := []struct {
		host string
		want bool
	}{
		{"abc.preview.example", true},
		{"web.pr-7.preview.example", true},
		{"pr-7.preview.example", false},
		{"a.b.pr-7.preview.example", false},
		{"abd.preview.example", false},
		{"", false},
		{".pr-7.preview.example", false},
	}
	for _, tt := range tests {
		if got := HostAllowed(patterns, tt.host); got != tt.want {
			t.Errorf("HostAllowed(%q) = %v, want %v", tt.host, got, tt.want)
		}
	}
}

// frozenConn stops delivering reads once frozen, like a peer that hangs.
type frozenConn struct {
	net.Conn
	frozen atomic.Bool
	thaw   chan struct{}
	once   sync.Once
}

func (f *frozenConn) Close() error {
	f.once.Do(func() { close(f.thaw) })
	return f.Conn.Close()
}

func (f *frozenConn) Read(p []byte) (int, error) {
	if f.frozen.Load() {
		<-f.thaw
		return 0, io.EOF
	}
	n, err := f.Conn.Read(p)
	if f.frozen.Load() {
		<-f.thaw
		return 0, io.EOF
	}
	return n, err
}

// TestShutdownDoesNotWaitOnAStalledAgent: the goaway to an agent whose
// link is full queues behind the data already on its way. Shutdown still
// ends at its ctx, and the other agents hear their goaway at once.
func TestShutdownDoesNotWaitOnAStalledAgent(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	raw, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	tc := tls.Client(raw, &tls.Config{RootCAs: ts.ca.Pool(), ServerName: "127.0.0.1"})
	if err := writeHello(tc, Version, hello{Token: "token-a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := readAnswer(tc); err != nil {
		t.Fatal(err)
	}
	ycfg := yamux.DefaultConfig()
	ycfg.EnableKeepAlive = false
	ycfg.LogOutput = io.Discard
	// Its downlink stopped taking the proxy's bytes (full, or very slow)
	// while its pings still go up.
	link := &frozenConn{Conn: tc, thaw: make(chan struct{})}
	link.frozen.Store(true)
	cli, err := yamux.Client(link, ycfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		link.Close() // yamux's Close waits for its read loop
		cli.Close()
	}()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the stalled agent is alive: its pings keep arriving
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				go cli.Ping()
			}
		}
	}()
	stalled := waitSession(t, ts, idA.Agent, 0)
	// Fill the stalled agent's link: these writes never finish. The
	// streams are opened first, since an open, too, queues behind data.
	streams := make([]net.Conn, 40)
	for i := range streams {
		if streams[i], err = stalled.OpenPreview(ctxT(t, 2*time.Second), "a.preview.test"); err != nil {
			t.Fatal(err)
		}
	}
	big := make([]byte, 256<<10)
	for _, c := range streams {
		go c.Write(big)
	}
	b := startAgent(t, ts, "token-b", echoHandler())
	if _, err := b.WaitConnected(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	waitSession(t, ts, idB.Agent, 0)

	const grace = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	shut := make(chan error, 1)
	start := time.Now()
	go func() { shut <- ts.Shutdown(ctx, "test shutdown") }()
	// The other agent hears its goaway and drops its session.
	for {
		if _, ok := b.Welcome(); !ok {
			break
		}
		if time.Since(start) > grace {
			t.Error("the other agent did not hear its goaway within the grace period")
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case err := <-shut:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown = %v, want its ctx's deadline: the stalled session was still busy", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("Shutdown with %v of grace still running after %v", grace, time.Since(start))
	}
}

// TestYamuxValvesWaitAsLongAsTheLinkNeeds: yamux's two valves, the wait
// for a frame's write and the wait for an open's acknowledgement, each
// end a healthy session when they fire on a slow, busy link, where every
// frame queues behind the data already on its way. By default neither may
// fire before a single frame's wait (frameQueueTimeout); liveness is the
// heartbeat's job.
func TestYamuxValvesWaitAsLongAsTheLinkNeeds(t *testing.T) {
	y := DefaultConfig().yamuxConfig()
	for _, v := range []struct {
		name string
		d    time.Duration
	}{
		{"ConnectionWriteTimeout", y.ConnectionWriteTimeout},
		{"StreamOpenTimeout", y.StreamOpenTimeout},
	} {
		if v.d < frameQueueTimeout {
			t.Errorf("yamux %s = %v by default: a frame may wait %v behind other streams' data", v.name, v.d, frameQueueTimeout)
		}
	}
}

// TestCloseReturnsAfterEverySessionIsDown: Close ends every session, and
// the proxy withdraws each one's route in OnSessionDown. A caller closes
// its route table once Close (or Shutdown) returns: a withdrawal still
// running then fails, and other nodes send the agent's visitors to this
// node, which is gone, until the route's TTL runs out.
func TestCloseReturnsAfterEverySessionIsDown(t *testing.T) {
	var ev events
	cfg := ServerConfig{}
	ev.hooks(&cfg)
	down := cfg.OnSessionDown
	cfg.OnSessionDown = func(s *Session) {
		time.Sleep(100 * time.Millisecond) // a route table round trip
		down(s)
	}
	ts := startServer(t, cfg)
	startAgent(t, ts, "token-a", echoHandler())
	startAgent(t, ts, "token-b", echoHandler())
	waitSession(t, ts, idA.Agent, 0)
	waitSession(t, ts, idB.Agent, 0)
	ts.Close()
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if len(ev.down) != 2 {
		t.Fatalf("Close returned with %d of 2 sessions' OnSessionDown done", len(ev.down))
	}
}
