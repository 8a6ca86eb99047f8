package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
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

// recorder keeps every byte a relay carries.
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
func TestRouteStoreContract(t *testing.T) {
	stores := map[string]func(t *testing.T) RouteStore{
		"memory": func(*testing.T) RouteStore { return NewMemory() },
		"valkey": func(t *testing.T) RouteStore { return openValkey(t) },
	}
	for name, open := range stores {
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
			// Expiry.
			s.Publish(ctx, []Publication{{Agent: "short", Environment: "e", Hosts: []string{"s.p.test"}, Node: "n:1", Generation: 1}}, 50*time.Millisecond, 50*time.Millisecond)
			time.Sleep(120 * time.Millisecond)
			check("s.p.test", Route{}, ErrNoRoute)
		})
	}
}
