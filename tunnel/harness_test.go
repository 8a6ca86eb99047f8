package tunnel

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// staticAuth maps tokens to identities.
type staticAuth map[string]Identity

func (a staticAuth) Authenticate(_ context.Context, token string) (Identity, error) {
	id, ok := a[token]
	if !ok {
		return Identity{}, ErrBadToken
	}
	return id, nil
}

var (
	idA = Identity{Agent: "agent-a", Environment: "env-a", Hostnames: []string{"a.preview.test", "*.a-wild.preview.test"}}
	idB = Identity{Agent: "agent-b", Environment: "env-b", Hostnames: []string{"b.preview.test"}}
)

func testAuth() staticAuth { return staticAuth{"token-a": idA, "token-b": idB} }

type testServer struct {
	*Server
	addr string
	ca   *DevCA
	ln   net.Listener
}

// fastTunnel is a Config with short timers, so failures show in tests
// quickly.
func fastTunnel() Config {
	c := DefaultConfig()
	c.KeepAliveInterval = 500 * time.Millisecond
	c.WriteTimeout = 500 * time.Millisecond
	c.HandshakeTimeout = 2 * time.Second
	return c
}

func startServer(t testing.TB, cfg ServerConfig) *testServer {
	t.Helper()
	ca, err := NewDevCA()
	if err != nil {
		t.Fatal(err)
	}
	return startServerWithCA(t, ca, "127.0.0.1:0", cfg)
}

func startServerWithCA(t testing.TB, ca *DevCA, addr string, cfg ServerConfig) *testServer {
	t.Helper()
	tc, err := ca.ServerConfig("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLS = tc
	if cfg.Authenticator == nil {
		cfg.Authenticator = testAuth()
	}
	if cfg.Tunnel.KeepAliveInterval == 0 {
		cfg.Tunnel = fastTunnel()
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), ln)
	t.Cleanup(srv.Close)
	return &testServer{Server: srv, addr: ln.Addr().String(), ca: ca, ln: ln}
}

type testAgent struct {
	*Agent
	cancel context.CancelFunc
	done   chan error
}

func startAgent(t testing.TB, ts *testServer, token string, h StreamHandler, tweak ...func(*AgentConfig)) *testAgent {
	t.Helper()
	cfg := AgentConfig{
		Addr:    ts.addr,
		Token:   token,
		TLS:     &tls.Config{RootCAs: ts.ca.Pool()},
		Handler: h,
		Tunnel:  fastTunnel(),
		Backoff: Backoff{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond, Stable: time.Second},
	}
	for _, f := range tweak {
		f(&cfg)
	}
	a, err := NewAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ta := &testAgent{Agent: a, cancel: cancel, done: make(chan error, 1)}
	go func() { ta.done <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-ta.done })
	return ta
}

// echoHandler echoes each preview stream, after writing the hostname and
// a newline.
func echoHandler() StreamHandler {
	return StreamHandlerFunc(func(_ context.Context, host string, c net.Conn) {
		defer c.Close()
		io.WriteString(c, host+"\n")
		io.Copy(c, c)
	})
}

func waitSession(t testing.TB, ts *testServer, agent string, newerThan uint64) *Session {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if s, ok := ts.Lookup(agent); ok && s.Generation() > newerThan {
			return s
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("agent %s has no session newer than %d", agent, newerThan)
	return nil
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// readLine reads up to and including '\n'.
func readLine(t testing.TB, r io.Reader) string {
	t.Helper()
	var b []byte
	one := make([]byte, 1)
	for {
		if _, err := r.Read(one); err != nil {
			t.Fatalf("read line: %v (so far %q)", err, b)
		}
		if one[0] == '\n' {
			return string(b)
		}
		b = append(b, one[0])
	}
}

// events records session up and down calls.
type events struct {
	mu   sync.Mutex
	up   []uint64
	down []uint64
}

func (e *events) hooks(cfg *ServerConfig) {
	cfg.OnSessionUp = func(s *Session) { e.mu.Lock(); e.up = append(e.up, s.Generation()); e.mu.Unlock() }
	cfg.OnSessionDown = func(s *Session) { e.mu.Lock(); e.down = append(e.down, s.Generation()); e.mu.Unlock() }
}
