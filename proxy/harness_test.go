package proxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/stagely-dev/stagely/tunnel"
)

const (
	hostA = "a1.preview.test"
	hostB = "b2.preview.test"
)

var (
	idA = tunnel.Identity{Agent: "agent-a", Environment: "env-a", Hostnames: []string{hostA}}
	idB = tunnel.Identity{Agent: "agent-b", Environment: "env-b", Hostnames: []string{hostB}}
)

type tokenAuth map[string]tunnel.Identity

func (a tokenAuth) Authenticate(_ context.Context, token string) (tunnel.Identity, error) {
	if id, ok := a[token]; ok {
		return id, nil
	}
	return tunnel.Identity{}, tunnel.ErrBadToken
}

func testAuth() tokenAuth { return tokenAuth{"token-a": idA, "token-b": idB} }

// node is one proxy under test with its listeners.
type node struct {
	*Proxy
	public string // public HTTP address
	tunnel string // tunnel address
	hop    string // internal hop address, if any
	ca     *tunnel.DevCA
}

type nodeOpts struct {
	ca       *tunnel.DevCA
	tunnelLn net.Listener
	routes   RouteStore
	multi    bool // listen for the internal hop
	secret   []byte
	tweak    func(*Config)
	// production: the tunnel's default (tuned) timers, not the short
	// test ones; benchmarks use it.
	production bool
}

func fastTunnel() tunnel.Config {
	c := tunnel.DefaultConfig()
	c.KeepAliveInterval = 500 * time.Millisecond
	c.WriteTimeout = 500 * time.Millisecond
	c.HandshakeTimeout = 2 * time.Second
	return c
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

var testSecret = []byte("0123456789abcdef0123456789abcdef-test")

func startNode(t testing.TB, o nodeOpts) *node {
	t.Helper()
	if o.ca == nil {
		ca, err := tunnel.NewDevCA()
		if err != nil {
			t.Fatal(err)
		}
		o.ca = ca
	}
	tc, err := o.ca.ServerConfig("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		PreviewDomain: "preview.test",
		Routes:        o.routes,
		TunnelTLS:     tc,
		Authenticator: testAuth(),
		Tunnel:        fastTunnel(),
	}
	if o.production {
		cfg.Tunnel = tunnel.DefaultConfig()
	}
	var hopLn net.Listener
	if o.multi {
		hopLn = listen(t)
		cfg.Node = hopLn.Addr().String()
		cfg.HopSecret = testSecret
		if o.secret != nil {
			cfg.HopSecret = o.secret
		}
	}
	if o.tweak != nil {
		o.tweak(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tl := o.tunnelLn
	if tl == nil {
		tl = listen(t)
	}
	pl := listen(t)
	ctx := context.Background()
	go p.ServeTunnel(ctx, tl)
	go p.Serve(ctx, pl)
	n := &node{Proxy: p, public: pl.Addr().String(), tunnel: tl.Addr().String(), ca: o.ca}
	if hopLn != nil {
		go p.ServeHop(ctx, hopLn)
		n.hop = hopLn.Addr().String()
	}
	t.Cleanup(p.Close)
	return n
}

// agentFor connects an in-process agent with token to n, forwarding its
// hostnames to backend.
func agentFor(t testing.TB, n *node, token, backend string, tweak ...func(*tunnel.AgentConfig)) *tunnel.Agent {
	t.Helper()
	cfg := tunnel.AgentConfig{
		Addr:    n.tunnel,
		Token:   token,
		TLS:     &tls.Config{RootCAs: n.ca.Pool()},
		Handler: &tunnel.Forward{Targets: map[string]string{"*": backend}},
		Tunnel:  fastTunnel(),
		Backoff: tunnel.Backoff{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond, Stable: time.Second},
	}
	for _, f := range tweak {
		f(&cfg)
	}
	a, err := tunnel.NewAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	wel, err := a.WaitConnected(wctx)
	if err != nil {
		t.Fatal(err)
	}
	// The agent hears "accepted" a moment before the proxy has published
	// its route: wait for the route, as a client would retry.
	waitLive(t, n, wel.Hostnames[0])
	return a
}

func waitLive(t testing.TB, n *node, host string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if ok, _ := n.LiveRoute(context.Background(), host); ok {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("route for %s not live", host)
}

// client sends requests to a proxy's public address whatever the URL's
// host, which becomes the Host header.
func client(addr string) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return d.DialContext(ctx, network, addr)
			},
			MaxIdleConnsPerHost: 1000,
			DisableCompression:  true,
		},
		Timeout: 2 * time.Minute,
	}
}

func get(t testing.TB, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// testBackend is the preview's service: a plain HTTP server on loopback.
type testBackend struct {
	addr string
	sums *sumStore
}

func backend(t testing.TB) *testBackend {
	t.Helper()
	ln := listen(t)
	b := &testBackend{addr: ln.Addr().String(), sums: newSumStore()}
	srv := &http.Server{Handler: backendMux(b.sums)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return b
}

// backendMux is the preview service used by the tests and the benchmarks.
func backendMux(sums *sumStore) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from "+r.Host)
	})
	mux.HandleFunc("/tiny", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "2")
		w.Write([]byte("ok"))
	})
	mux.HandleFunc("/bulk", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		buf := make([]byte, 256<<10)
		for n > 0 {
			chunk := buf[:min(int64(len(buf)), n)]
			if _, err := w.Write(chunk); err != nil {
				return
			}
			n -= int64(len(chunk))
		}
	})
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"host": r.Host, "header": r.Header})
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		io.WriteString(w, "slow done")
	})
	mux.HandleFunc("/download", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		seed, _ := strconv.ParseUint(r.URL.Query().Get("seed"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		h := sha256.New()
		writeRandom(io.MultiWriter(w, h), n, seed)
		// The checksum of what was sent goes to a side channel the test
		// compares with: the trailer is not available with Content-Length.
		sums.store(seed, hex.EncodeToString(h.Sum(nil)))
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
	})
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		for i := range 3 {
			fmt.Fprintf(w, "data: event %d\n\n", i)
			f.Flush()
			select {
			case <-time.After(300 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo: "), msg...)); err != nil {
				return
			}
		}
	})
	return mux
}

// writeRandom writes n deterministic pseudo-random bytes for seed.
func writeRandom(w io.Writer, n int64, seed uint64) error {
	var key [32]byte
	key[0] = byte(seed)
	key[1] = byte(seed >> 8)
	src := rand.NewChaCha8(key)
	buf := make([]byte, 256<<10)
	for n > 0 {
		chunk := buf
		if int64(len(chunk)) > n {
			chunk = chunk[:n]
		}
		src.Read(chunk)
		if _, err := w.Write(chunk); err != nil {
			return err
		}
		n -= int64(len(chunk))
	}
	return nil
}

// randomReader streams n deterministic bytes for seed.
func randomReader(n int64, seed uint64) io.Reader {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeRandom(pw, n, seed)) }()
	return pr
}

// sumStore holds the backend's checksums of what it sent, by seed.
type sumStore struct{ ch chan [2]string }

func newSumStore() *sumStore { return &sumStore{ch: make(chan [2]string, 16)} }

func (s *sumStore) store(seed uint64, sum string) {
	s.ch <- [2]string{strconv.FormatUint(seed, 10), sum}
}

func (s *sumStore) wait(t testing.TB, seed uint64) string {
	t.Helper()
	for {
		select {
		case v := <-s.ch:
			if v[0] == strconv.FormatUint(seed, 10) {
				return v[1]
			}
		case <-time.After(30 * time.Second):
			t.Fatal("backend never reported its checksum")
		}
	}
}

// agentProcess runs an agent in a child process (the test binary again),
// so a test can kill it as a VM would die.
type agentProcess struct {
	cmd       *exec.Cmd
	connected chan struct{}
}

const childEnv = "STAGELY_PROXY_TEST_AGENT_CHILD"

func startAgentProcess(t testing.TB, n *node, token, backend string) *agentProcess {
	t.Helper()
	caFile := t.TempDir() + "/ca.pem"
	if err := os.WriteFile(caFile, n.ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", "CHILD_PROXY="+n.tunnel, "CHILD_CA="+caFile,
		"CHILD_TOKEN="+token, "CHILD_BACKEND="+backend)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ap := &agentProcess{cmd: cmd, connected: make(chan struct{}, 8)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "connected" {
				ap.connected <- struct{}{}
			}
		}
	}()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	select {
	case <-ap.connected:
	case <-time.After(10 * time.Second):
		t.Fatal("agent process did not connect")
	}
	waitLive(t, n, testAuth()[token].Hostnames[0])
	return ap
}

func (ap *agentProcess) kill() {
	ap.cmd.Process.Kill()
	ap.cmd.Wait()
}

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(agentChild())
	}
	if os.Getenv(benchChildEnv) != "" {
		os.Exit(benchAgentsChild())
	}
	if os.Getenv(loadChildEnv) != "" {
		os.Exit(loadChild())
	}
	os.Exit(m.Run())
}

// agentChild is the body of an agent process: it prints "connected" on
// each session.
func agentChild() int {
	pem, err := os.ReadFile(os.Getenv("CHILD_CA"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pool, err := tunnel.CAPool(pem)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	a, err := tunnel.NewAgent(tunnel.AgentConfig{
		Addr:      os.Getenv("CHILD_PROXY"),
		Token:     os.Getenv("CHILD_TOKEN"),
		TLS:       &tls.Config{RootCAs: pool},
		Handler:   &tunnel.Forward{Targets: map[string]string{"*": os.Getenv("CHILD_BACKEND")}},
		Tunnel:    fastTunnel(),
		Backoff:   tunnel.Backoff{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond, Stable: time.Second},
		OnConnect: func(tunnel.Welcome) { fmt.Println("connected") },
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := a.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// listenOn listens on a given address again, retrying while the old
// listener's port is released.
func listenOn(addr string) (net.Listener, error) {
	var err error
	for range 50 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", addr); err == nil {
			return ln, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil, err
}
