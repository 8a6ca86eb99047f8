package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/stagely-dev/stagely/tunnel"
)

// A WebSocket that reached a node over the hop holds no stream of that
// node's tunnel, and http.Server forgets a hijacked connection: Shutdown
// must still wait for it within its drain, and end it after.
func TestShutdownDrainsAWebSocketThatCameOverTheHop(t *testing.T) {
	store1 := openValkey(t)
	store2 := &Valkey{c: store1.c, prefix: store1.prefix}
	n1 := startNode(t, nodeOpts{routes: store1, multi: true})
	n2 := startNode(t, nodeOpts{routes: store2, multi: true, ca: n1.ca})
	agentFor(t, n1, "token-a", backend(t).addr)
	ctx := ctxTimeout(t, 20*time.Second)
	ws, _, err := websocket.Dial(ctx, "ws://"+hostA+"/ws", &websocket.DialOptions{HTTPClient: client(n2.public)})
	if err != nil {
		t.Fatalf("WebSocket via node 2: %v", err)
	}
	defer ws.CloseNow()
	echo := func() error {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if err := ws.Write(rctx, websocket.MessageText, []byte("ping")); err != nil {
			return err
		}
		_, msg, err := ws.Read(rctx)
		if err == nil && string(msg) != "echo: ping" {
			err = errors.New("bad echo " + string(msg))
		}
		return err
	}
	if err := echo(); err != nil {
		t.Fatal(err)
	}
	const drain = 2 * time.Second
	sctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	start := time.Now()
	err = n2.Shutdown(sctx)
	if took := time.Since(start); took < drain*3/4 {
		t.Errorf("Shutdown returned after %v (drain %v), while the WebSocket was open", took.Round(time.Millisecond), drain)
	}
	if err == nil {
		t.Error("Shutdown cut a WebSocket at the end of its drain and reported no error")
	}
	if echo() == nil {
		t.Error("the WebSocket still works after Shutdown: it leaks")
	}
}

// acceptFailsOnce is a listener whose first Accept finds no free file
// descriptor, as during a burst of visitors.
type acceptFailsOnce struct {
	net.Listener
	failed atomic.Bool
}

func (l *acceptFailsOnce) Accept() (net.Conn, error) {
	if !l.failed.Swap(true) {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// A moment without file descriptors does not end the tunnel listener (the
// proxy would exit on its error): like net/http's, it waits and accepts
// again.
func TestTunnelListenerOutlivesAMomentWithoutFileDescriptors(t *testing.T) {
	n := startNode(t, nodeOpts{})
	ln := &acceptFailsOnce{Listener: listen(t)}
	served := make(chan error, 1)
	go func() { served <- n.ServeTunnel(context.Background(), ln) }()
	select {
	case err := <-served:
		t.Fatalf("ServeTunnel ended on EMFILE: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	viaLn := *n
	viaLn.tunnel = ln.Addr().String()
	agentFor(t, &viaLn, "token-a", backend(t).addr)
}

// A listener handed to Serve while Shutdown drains is refused and closed,
// not served after Shutdown returns.
func TestServeDuringShutdownIsRefused(t *testing.T) {
	n := startNode(t, nodeOpts{})
	agentFor(t, n, "token-a", backend(t).addr)
	slow := make(chan struct{})
	go func() {
		defer close(slow)
		if resp, err := client(n.public).Get("http://" + hostA + "/slow?ms=1000"); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	time.Sleep(200 * time.Millisecond)
	shut := make(chan error, 1)
	go func() { shut <- n.Shutdown(ctxTimeout(t, 5*time.Second)) }()
	time.Sleep(200 * time.Millisecond) // Shutdown drains the slow request
	late := listen(t)
	served := make(chan error, 1)
	go func() { served <- n.Serve(context.Background(), late) }()
	<-shut
	<-slow
	select {
	case <-served:
	case <-time.After(time.Second):
		t.Fatal("a second after Shutdown returned, a Serve begun during the drain still serves")
	}
}

// Serve and ServeTunnel on a closed node close the listener they were
// given, as http.Server.Serve does, so the port is not left bound.
func TestServeAfterCloseClosesTheListener(t *testing.T) {
	n := startNode(t, nodeOpts{})
	n.Close()
	for name, serve := range map[string]func(net.Listener) error{
		"Serve":       func(ln net.Listener) error { return n.Serve(context.Background(), ln) },
		"ServeTunnel": func(ln net.Listener) error { return n.ServeTunnel(context.Background(), ln) },
	} {
		ln := listen(t)
		err := serve(ln)
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(100 * time.Millisecond))
		if _, aerr := ln.Accept(); !errors.Is(aerr, net.ErrClosed) {
			t.Errorf("%s after Close returned %v and left its listener open", name, err)
		}
		ln.Close()
	}
}

// A preview domain written as people write it is served, or refused at
// New: never accepted and then answered with 404 for every preview.
func TestPreviewDomainIsNormalisedOrRefused(t *testing.T) {
	be := backend(t)
	for _, tt := range []struct {
		domain  string
		refused bool
	}{
		{"Preview.Test", false},
		{"preview.test.", false},
		{"*.preview.test", true},
		{".preview.test", true},
	} {
		t.Run(tt.domain, func(t *testing.T) {
			ca, err := tunnel.NewDevCA()
			if err != nil {
				t.Fatal(err)
			}
			tc, err := ca.ServerConfig("127.0.0.1")
			if err != nil {
				t.Fatal(err)
			}
			_, err = New(Config{PreviewDomain: tt.domain, TunnelTLS: tc, Authenticator: testAuth(), Tunnel: fastTunnel()})
			if tt.refused {
				if err == nil || !strings.Contains(err.Error(), "PreviewDomain") {
					t.Fatalf("New = %v, want an error naming PreviewDomain", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			n := startNode(t, nodeOpts{tweak: func(c *Config) { c.PreviewDomain = tt.domain }})
			agentFor(t, n, "token-a", be.addr)
			if status, body := get(t, client(n.public), "http://"+hostA+"/hello"); status != 200 {
				t.Fatalf("%s under PreviewDomain %q answers %d: %.60q", hostA, tt.domain, status, body)
			}
		})
	}
}
