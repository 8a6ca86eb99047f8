package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"

	"github.com/stagely-dev/stagely/tunnel"
)

// valkeyURL is the shared Valkey (Redis 7) the tests use; scripts/services.sh
// starts it. A test that needs it fails when it is unreachable: it never
// skips.
func valkeyURL() string {
	if u := os.Getenv("STAGELY_TEST_VALKEY_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

// openValkey returns a route table under a prefix no other test uses.
func openValkey(t testing.TB) *Valkey {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b := make([]byte, 6)
	rand.Read(b)
	v, err := OpenValkey(ctx, valkeyURL(), "stagely-test:"+t.Name()+":"+hex.EncodeToString(b)+":")
	if err != nil {
		t.Fatalf("Valkey at %s is required (run scripts/services.sh): %v", valkeyURL(), err)
	}
	t.Cleanup(v.Close)
	return v
}

// TestTwoProxiesShareValkey connects an agent to node 1 and sends the
// request to node 2: node 2 finds the agent's node in Valkey and forwards
// over the signed internal hop.
func TestTwoProxiesShareValkey(t *testing.T) {
	store1, store2 := openValkey(t), (*Valkey)(nil)
	store2 = &Valkey{c: store1.c, prefix: store1.prefix} // same table, its own handle
	n1 := startNode(t, nodeOpts{routes: store1, multi: true})
	n2 := startNode(t, nodeOpts{routes: store2, multi: true, ca: n1.ca})
	be := backend(t)
	agentFor(t, n1, "token-a", be.addr)
	if _, ok := n2.Tunnel().Lookup(idA.Agent); ok {
		t.Fatal("setup: the agent should be connected to node 1 only")
	}
	req, _ := http.NewRequest("GET", "http://"+hostA+"/headers", nil)
	req.Header.Set("X-Forwarded-For", "6.6.6.6")
	resp, err := client(n2.public).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("via node 2: status %d", resp.StatusCode)
	}
	var got struct{ Header http.Header }
	json.NewDecoder(resp.Body).Decode(&got)
	if xff := got.Header.Get("X-Forwarded-For"); xff != "127.0.0.1" {
		t.Fatalf("X-Forwarded-For after the hop = %q, want the client as node 2 saw it", xff)
	}
	if got.Header.Get(hopHeader) != "" {
		t.Fatal("hop signature reached the preview")
	}
	// An upgrade crosses the hop too.
	ctx := ctxTimeout(t, 10*time.Second)
	ws, _, err := websocket.Dial(ctx, "ws://"+hostA+"/ws", &websocket.DialOptions{HTTPClient: client(n2.public)})
	if err != nil {
		t.Fatalf("WebSocket via node 2: %v", err)
	}
	ws.Write(ctx, websocket.MessageText, []byte("across"))
	if _, msg, err := ws.Read(ctx); err != nil || string(msg) != "echo: across" {
		t.Fatalf("WebSocket echo via node 2: %q, %v", msg, err)
	}
	ws.Close(websocket.StatusNormalClosure, "")

	// The agent moves to node 2: node 1 now forwards there.
	n1.Tunnel().Close()
	agentFor(t, n2, "token-a", be.addr)
	deadline := time.Now().Add(3 * time.Second)
	for {
		status, _ := get(t, client(n1.public), "http://"+hostA+"/hello")
		if status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node 1 does not reach the agent on node 2: %d", status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestHopIsEncrypted sends a request across the hop through a relay that
// records the bytes between the nodes: neither the request nor the
// response may be readable there.
func TestHopIsEncrypted(t *testing.T) {
	store1 := openValkey(t)
	store2 := &Valkey{c: store1.c, prefix: store1.prefix}
	relayLn := listen(t)
	// Node 1 advertises the relay as its hop address.
	n1 := startNode(t, nodeOpts{routes: store1, multi: true, tweak: func(c *Config) { c.Node = relayLn.Addr().String() }})
	wire := &recorder{}
	go relay(relayLn, n1.hop, wire)
	n2 := startNode(t, nodeOpts{routes: store2, multi: true, ca: n1.ca})
	be := backend(t)
	agentFor(t, n1, "token-a", be.addr)

	status, body := get(t, client(n2.public), "http://"+hostA+"/hello")
	if status != 200 || body != "hello from "+hostA {
		t.Fatalf("via node 2 and the relay: %d %q", status, body)
	}
	seen := wire.bytes()
	if len(seen) < 100 {
		t.Fatalf("the request did not cross the relay (%d bytes)", len(seen))
	}
	for _, plain := range []string{hostA, "/hello", "hello from", "HTTP/1.1", hopHeader} {
		if bytes.Contains(seen, []byte(plain)) {
			t.Errorf("%q readable between the nodes", plain)
		}
	}
}

// recorder keeps every byte written to it: a relay's traffic, a log.
type recorder struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.Write(p)
}

func (r *recorder) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.buf.Bytes())
}

// relay forwards each connection on ln to target, copying both
// directions into rec, until ln closes.
func relay(ln net.Listener, target string, rec io.Writer) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer u.Close()
			go io.Copy(io.MultiWriter(u, rec), c)
			io.Copy(io.MultiWriter(c, rec), u)
		}()
	}
}

// TestRouteStoreContract runs the same checks on the in-process table and
// on Valkey.
// routeStores opens each kind of RouteStore for a test.
func routeStores() map[string]func(t *testing.T) RouteStore {
	return map[string]func(t *testing.T) RouteStore{
		"memory": func(*testing.T) RouteStore { return NewMemory() },
		"valkey": func(t *testing.T) RouteStore { return openValkey(t) },
	}
}

func TestRouteStoreContract(t *testing.T) {
	for name, open := range routeStores() {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			s := open(t)
			const ttl = time.Minute
			pub := Publication{Agent: "agt", Environment: "env", Hosts: []string{"x.p.test", "*.w.p.test"}, Node: "node1:1", Generation: 100}
			if err := s.Publish(ctx, []Publication{pub}, ttl, ttl); err != nil {
				t.Fatal(err)
			}
			check := func(host string, want Route, wantErr error) {
				t.Helper()
				got, err := s.Resolve(ctx, host)
				if !errors.Is(err, wantErr) || got != want {
					t.Fatalf("Resolve(%s) = %+v, %v; want %+v, %v", host, got, err, want, wantErr)
				}
			}
			check("x.p.test", Route{Key: "x.p.test", Environment: "env", Agent: "agt", Node: "node1:1", Generation: 100}, nil)
			check("y.w.p.test", Route{Key: "*.w.p.test", Environment: "env", Agent: "agt", Node: "node1:1", Generation: 100}, nil)
			check("nope.p.test", Route{}, ErrNoRoute)
			check("z.y.w.p.test", Route{}, ErrNoRoute)

			// A stale node's older generation does not overwrite.
			old := pub
			old.Node, old.Generation = "node0:1", 50
			s.Publish(ctx, []Publication{old}, ttl, ttl)
			check("x.p.test", Route{Key: "x.p.test", Environment: "env", Agent: "agt", Node: "node1:1", Generation: 100}, nil)
			// The old session's withdrawal removes nothing.
			s.Withdraw(ctx, "agt", 50)
			check("x.p.test", Route{Key: "x.p.test", Environment: "env", Agent: "agt", Node: "node1:1", Generation: 100}, nil)
			// A newer one moves the agent.
			moved := pub
			moved.Node, moved.Generation = "node2:1", 200
			s.Publish(ctx, []Publication{moved}, ttl, ttl)
			check("x.p.test", Route{Key: "x.p.test", Environment: "env", Agent: "agt", Node: "node2:1", Generation: 200}, nil)
			// Its own withdrawal leaves a known host with no node: 502, not 404.
			s.Withdraw(ctx, "agt", 200)
			check("x.p.test", Route{Key: "x.p.test", Environment: "env", Agent: "agt"}, nil)
			// The server's own host entries, and their removal.
			s.PutHost(ctx, "srv.p.test", "env2", "agt2", 0)
			check("srv.p.test", Route{Key: "srv.p.test", Environment: "env2", Agent: "agt2"}, nil)
			s.DeleteHost(ctx, "srv.p.test")
			check("srv.p.test", Route{}, ErrNoRoute)
			// A refresh extends hosts but does not bring back one the server
			// deleted while the agent was still connected...
			live := Publication{Agent: "agt3", Environment: "env3", Hosts: []string{"d.p.test"}, Node: "node1:1", Generation: 7}
			s.Publish(ctx, []Publication{live}, ttl, ttl)
			check("d.p.test", Route{Key: "d.p.test", Environment: "env3", Agent: "agt3", Node: "node1:1", Generation: 7}, nil)
			s.DeleteHost(ctx, "d.p.test")
			refresh := live
			refresh.Refresh = true
			s.Publish(ctx, []Publication{refresh}, ttl, ttl)
			check("d.p.test", Route{}, ErrNoRoute)
			// ...unless the agent's location was gone too: the table lost
			// its keys, or the first publication never landed.
			s.Withdraw(ctx, "agt3", 7)
			s.Publish(ctx, []Publication{refresh}, ttl, ttl)
			check("d.p.test", Route{Key: "d.p.test", Environment: "env3", Agent: "agt3", Node: "node1:1", Generation: 7}, nil)
			// Expiry.
			s.Publish(ctx, []Publication{{Agent: "short", Environment: "e", Hosts: []string{"s.p.test"}, Node: "n:1", Generation: 1}}, 50*time.Millisecond, 50*time.Millisecond)
			time.Sleep(120 * time.Millisecond)
			check("s.p.test", Route{}, ErrNoRoute)
		})
	}
}

// A node that is frozen (paused, wedged) still has its kernel accept the
// hop's connection: the visitor gets the 502 page after the handshake's
// bound, not a request that never ends.
func TestHopToAFrozenNodeAnswers502(t *testing.T) {
	frozen := listen(t) // accepted by the kernel, never served
	t.Cleanup(func() { frozen.Close() })
	store1 := openValkey(t)
	store2 := &Valkey{c: store1.c, prefix: store1.prefix}
	n1 := startNode(t, nodeOpts{routes: store1, multi: true, tweak: func(c *Config) { c.Node = frozen.Addr().String() }})
	n2 := startNode(t, nodeOpts{routes: store2, multi: true, ca: n1.ca})
	agentFor(t, n1, "token-a", backend(t).addr)
	c := client(n2.public)
	c.Timeout = 20 * time.Second
	start := time.Now()
	status, body := get(t, c, "http://"+hostA+"/hello")
	if status != http.StatusBadGateway || !strings.Contains(body, "not reachable right now") {
		t.Fatalf("via node 2 to a frozen node 1: %d, want the 502 page", status)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("the 502 took %v", took)
	}
}

// When the node holding the agent refuses a hop request (the nodes' hop
// secrets or clocks differ), the visitor gets the 502 page, not a bare
// 401, and the sending node says why at warn level.
func TestHopRefusalIsA502AndAWarning(t *testing.T) {
	tests := []struct {
		name      string
		n1, n2    func(*nodeOpts)
		wantInLog string
	}{
		{"hop secrets differ",
			func(*nodeOpts) {},
			func(o *nodeOpts) { o.secret = []byte("another-secret-another-secret-another-secret") },
			"hop secrets differ"},
		{"clocks differ",
			func(o *nodeOpts) { o.tweak = func(c *Config) { c.HopSkew = time.Nanosecond } },
			func(*nodeOpts) {},
			"signature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store1 := openValkey(t)
			store2 := &Valkey{c: store1.c, prefix: store1.prefix}
			o1 := nodeOpts{routes: store1, multi: true}
			tt.n1(&o1)
			n1 := startNode(t, o1)
			logs := &recorder{}
			o2 := nodeOpts{routes: store2, multi: true, ca: n1.ca}
			tt.n2(&o2)
			o2.tweak = func(c *Config) { c.Logger = zerolog.New(logs).Level(zerolog.InfoLevel) }
			n2 := startNode(t, o2)
			agentFor(t, n1, "token-a", backend(t).addr)
			time.Sleep(10 * time.Millisecond) // past a skew of 1 ns
			status, body := get(t, client(n2.public), "http://"+hostA+"/hello")
			if status != http.StatusBadGateway || !strings.Contains(body, "not reachable right now") {
				t.Fatalf("visitor got %d %.40q, want the 502 page", status, body)
			}
			var warned bool
			for line := range strings.Lines(string(logs.bytes())) {
				warned = warned || strings.Contains(line, `"level":"warn"`) && strings.Contains(line, "internal hop") && strings.Contains(line, tt.wantInLog)
			}
			if !warned {
				t.Fatalf("no warning naming the hop's failure (%q); logs:\n%s", tt.wantInLog, logs.bytes())
			}
		})
	}
}

// TestPreviewCannotForgeTheHopRefusal: a preview whose responses carry
// the hop listener's refusal header (it runs a pull request's code) is
// still served across the hop, as it is on the node that holds its agent,
// and no warning blames the nodes' secrets or clocks.
func TestPreviewCannotForgeTheHopRefusal(t *testing.T) {
	store1 := openValkey(t)
	store2 := &Valkey{c: store1.c, prefix: store1.prefix}
	n1 := startNode(t, nodeOpts{routes: store1, multi: true})
	logs := &recorder{}
	n2 := startNode(t, nodeOpts{routes: store2, multi: true, ca: n1.ca,
		tweak: func(c *Config) { c.Logger = zerolog.New(logs).Level(zerolog.WarnLevel) }})
	ln := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(hopRefusedHeader, "1")
		io.WriteString(w, "preview page")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	agentFor(t, n1, "token-a", ln.Addr().String())
	for _, n := range []*node{n1, n2} {
		status, body := get(t, client(n.public), "http://"+hostA+"/")
		if status != 200 || body != "preview page" {
			t.Errorf("via %s: %d %.40q, want the preview's page", n.public, status, body)
		}
	}
	if strings.Contains(string(logs.bytes()), "internal hop") {
		t.Errorf("a preview's header made node 2 warn about the hop:\n%s", logs.bytes())
	}
}

// startRedis runs a private redis-server on addr, without persistence, so
// that a test can take it away as an outage would.
func startRedis(t *testing.T, addr string) (stop func()) {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command("redis-server", "--bind", host, "--port", port, "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		t.Fatalf("redis-server (scripts/services.sh installs it): %v", err)
	}
	var once sync.Once
	stop = func() { once.Do(func() { cmd.Process.Kill(); cmd.Wait() }) }
	t.Cleanup(stop)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return stop
		}
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not start")
		}
	}
}

// While the shared route table is unreachable a visitor gets the 503
// page within seconds; when it comes back (empty, as after a restart)
// the refresh puts the route back.
func TestValkeyOutageAnswers503AndRecovers(t *testing.T) {
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close()
	stop := startRedis(t, addr)
	store, err := OpenValkey(ctxTimeout(t, 5*time.Second), "redis://"+addr+"/0", "outage:")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	n := startNode(t, nodeOpts{routes: store, multi: true, tweak: func(c *Config) {
		c.AgentTTL = 3 * time.Second
		c.RefreshInterval = 500 * time.Millisecond
	}})
	agentFor(t, n, "token-a", backend(t).addr)
	c := client(n.public)
	c.Timeout = 15 * time.Second
	if status, _ := get(t, c, "http://"+hostA+"/hello"); status != 200 {
		t.Fatalf("before the outage: %d", status)
	}
	stop()
	time.Sleep(1100 * time.Millisecond) // past the resolver's cache
	start := time.Now()
	resp, err := c.Get("http://" + hostA + "/hello")
	if err != nil {
		t.Fatalf("while Valkey is down: no answer after %v: %v", time.Since(start).Round(time.Millisecond), err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("while Valkey is down: %d, want 503", resp.StatusCode)
	}
	startRedis(t, addr)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		status, _ := get(t, c, "http://"+hostA+"/hello")
		if status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("routing did not come back with Valkey (last %d)", status)
		}
	}
}

// A destroyed preview answers 404 once its machine is gone, even when the
// agent stayed connected for a few refreshes after the server deleted its
// hosts, as a machine does while its cloud tears it down.
func TestDeletedHostStaysDeletedWhileItsAgentLingers(t *testing.T) {
	for name, open := range routeStores() {
		t.Run(name, func(t *testing.T) {
			store := open(t)
			n := startNode(t, nodeOpts{routes: store, multi: name == "valkey", tweak: func(c *Config) {
				c.AgentTTL = 2 * time.Second
				c.RefreshInterval = 200 * time.Millisecond
			}})
			ctx, cancel := context.WithCancel(context.Background())
			a, err := tunnel.NewAgent(tunnel.AgentConfig{Addr: n.tunnel, Token: "token-a", TLS: &tls.Config{RootCAs: n.ca.Pool()},
				Handler: &tunnel.Forward{Targets: map[string]string{"*": backend(t).addr}}, Tunnel: fastTunnel()})
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() { defer close(done); a.Run(ctx) }()
			defer func() { cancel(); <-done }()
			waitLive(t, n, hostA)
			if err := store.DeleteHost(t.Context(), hostA); err != nil {
				t.Fatal(err)
			}
			time.Sleep(600 * time.Millisecond) // three refreshes with the agent still there
			cancel()
			<-done
			time.Sleep(300 * time.Millisecond) // past the resolver's cache of the old answer
			if status, body := get(t, client(n.public), "http://"+hostA+"/hello"); status != http.StatusNotFound {
				_, err := store.Resolve(t.Context(), hostA)
				t.Fatalf("destroyed preview answers %d (%.60q), want 404; Resolve: %v", status, body, err)
			}
		})
	}
}

// Nodes sharing a route table must route alike: one with another preview
// domain (its hosts are not the others') or another hop secret (its hop
// fails every request) is refused at its start, saying which.
func TestNodesThatDisagreeOnTheTableAreRefused(t *testing.T) {
	first := openValkey(t)
	if err := first.Agree(context.Background(), "preview.test", testSecret); err != nil {
		t.Fatalf("the first node: %v", err)
	}
	tests := []struct {
		name   string
		domain string
		secret []byte
		want   string // "" for agreement
	}{
		{"the same", "preview.test", testSecret, ""},
		{"no hop", "preview.test", nil, ""},
		{"another domain", "previews.example.com", testSecret, `"previews.example.com" differs from "preview.test"`},
		{"another hop secret", "preview.test", []byte("another secret of at least thirty-two bytes"), "hop secret differs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			other := &Valkey{c: first.c, prefix: first.prefix}
			err := other.Agree(context.Background(), tt.domain, tt.secret)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("err = %v, want one saying %q", err, tt.want)
			}
		})
	}
}
