package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// streamCountingBackend serves mux on loopback and counts the connections it
// accepts: one per tunnel stream the agent was asked to open.
func streamCountingBackend(t *testing.T, mux http.Handler, tweak ...func(*http.Server)) (string, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	ln := listen(t)
	srv := &http.Server{Handler: mux, ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}}
	for _, f := range tweak {
		f(srv)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), &conns
}

func fastMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.Method, r.URL.Path)
	})
	mux.HandleFunc("/close", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "closing")
	})
	mux.HandleFunc("/empty", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Write(bytes.Repeat([]byte("x"), n))
	})
	mux.HandleFunc("/chunked", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		for i := range 3 {
			fmt.Fprintf(w, "part %d;", i)
			w.(http.Flusher).Flush()
		}
		w.Header().Set("X-Sum", "3")
	})
	mux.HandleFunc("/hints", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</app.css>; rel=preload; as=style")
		w.WriteHeader(http.StatusEarlyHints)
		io.WriteString(w, "after hints")
	})
	mux.HandleFunc("/huge-header", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Huge", strings.Repeat("h", 100<<10))
		io.WriteString(w, "too big")
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
			io.WriteString(w, "slow done")
		case <-r.Context().Done():
		}
	})
	return mux
}

func do(t *testing.T, c *http.Client, method, url string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Trailer
}

func TestFastPathKeepsOneStreamForSequentialRequests(t *testing.T) {
	addr, conns := streamCountingBackend(t, fastMux())
	n := startNode(t, nodeOpts{})
	agentFor(t, n, "token-a", addr)
	c := client(n.public)
	for i := range 20 {
		method := []string{"GET", "HEAD", "DELETE", "OPTIONS"}[i%4]
		code, body, _ := do(t, c, method, "http://"+hostA+"/hello")
		want := method + " /hello"
		if method == "HEAD" {
			want = ""
		}
		if code != 200 || body != want {
			t.Fatalf("%s = %d %q, want 200 %q", method, code, body, want)
		}
		if code, _, _ := do(t, c, "GET", "http://"+hostA+"/empty"); code != http.StatusNoContent {
			t.Fatalf("GET /empty = %d", code)
		}
	}
	code, body, trailer := do(t, c, "GET", "http://"+hostA+"/chunked")
	if code != 200 || body != "part 0;part 1;part 2;" || trailer.Get("X-Sum") != "3" {
		t.Fatalf("chunked = %d %q, trailer %v", code, body, trailer)
	}
	if got := conns.Load(); got != 1 {
		t.Errorf("the backend saw %d connections for 41 sequential requests, want 1 (the stream is reused)", got)
	}
}

func TestFastPathDoesNotReuseAStreamAfterConnectionClose(t *testing.T) {
	addr, conns := streamCountingBackend(t, fastMux())
	n := startNode(t, nodeOpts{})
	agentFor(t, n, "token-a", addr)
	c := client(n.public)
	for range 3 {
		if code, body, _ := do(t, c, "GET", "http://"+hostA+"/close"); code != 200 || body != "closing" {
			t.Fatalf("GET /close = %d %q", code, body)
		}
	}
	if got := conns.Load(); got != 3 {
		t.Errorf("the backend saw %d connections, want 3: a response with Connection: close ends its stream", got)
	}
}

func TestFastPathReplacesAStreamTheBackendClosedWhileIdle(t *testing.T) {
	// The backend ends keep-alive connections idle for 100ms, as Node.js
	// does after 5s: the agent then closes the stream, and the next request
	// must not be lost on it, whatever its method.
	addr, conns := streamCountingBackend(t, fastMux(), func(s *http.Server) { s.IdleTimeout = 100 * time.Millisecond })
	n := startNode(t, nodeOpts{})
	agentFor(t, n, "token-a", addr)
	c := client(n.public)
	for i, method := range []string{"GET", "POST", "PUT", "GET"} {
		if code, body, _ := do(t, c, method, "http://"+hostA+"/hello"); code != 200 || body != method+" /hello" {
			t.Fatalf("%s = %d %q", method, code, body)
		}
		if got := conns.Load(); got != int64(i+1) {
			t.Fatalf("after %d requests the backend saw %d connections", i+1, got)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func TestFastPathClosesAStreamWhoseBodyWasNotRead(t *testing.T) {
	addr, conns := streamCountingBackend(t, fastMux())
	n := startNode(t, nodeOpts{})
	agentFor(t, n, "token-a", addr)
	// A client that reads the head of a 64 MiB response and goes away.
	conn, err := net.Dial("tcp", n.public)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET /big?n=%d HTTP/1.1\r\nHost: %s\r\n\r\n", 64<<20, hostA)
	buf := make([]byte, 64<<10)
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	// The stream holding the rest of the body is not reused: the next
	// request gets the whole of its own answer on a new one.
	c := client(n.public)
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, body, _ := do(t, c, "GET", "http://"+hostA+"/big?n=100")
		if code != 200 || body != strings.Repeat("x", 100) {
			t.Fatalf("GET after an abandoned body = %d %.40q", code, body)
		}
		if conns.Load() == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend connections = %d, want 2", conns.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFastPathForwardsEarlyHints(t *testing.T) {
	addr, _ := streamCountingBackend(t, fastMux())
	n := startNode(t, nodeOpts{})
	agentFor(t, n, "token-a", addr)
	var hints []string
	var mu sync.Mutex
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		mu.Lock()
		defer mu.Unlock()
		hints = append(hints, fmt.Sprintf("%d %s", code, h.Get("Link")))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", "http://"+hostA+"/hints", nil)
	resp, err := client(n.public).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "after hints" {
		t.Fatalf("GET /hints = %d %q", resp.StatusCode, body)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(hints) != 1 || hints[0] != "103 </app.css>; rel=preload; as=style" {
		t.Errorf("the client saw informational responses %q, want the 103 with its Link", hints)
	}
}

func TestFastPathBoundsResponseHeaders(t *testing.T) {
	addr, _ := streamCountingBackend(t, fastMux())
	n := startNode(t, nodeOpts{})
	agentFor(t, n, "token-a", addr)
	c := client(n.public)
	if code, body, _ := do(t, c, "GET", "http://"+hostA+"/huge-header"); code != http.StatusBadGateway {
		t.Fatalf("a response with 100 KiB of headers = %d %.60q, want 502", code, body)
	}
	if code, _, _ := do(t, c, "GET", "http://"+hostA+"/hello"); code != 200 {
		t.Fatalf("the next request = %d", code)
	}
}

func TestFastPathResponseHeaderTimeout(t *testing.T) {
	addr, conns := streamCountingBackend(t, fastMux())
	n := startNode(t, nodeOpts{tweak: func(c *Config) { c.ResponseHeaderTimeout = 200 * time.Millisecond }})
	agentFor(t, n, "token-a", addr)
	c := client(n.public)
	start := time.Now()
	if code, _, _ := do(t, c, "GET", "http://"+hostA+"/slow?ms=3000"); code != http.StatusBadGateway {
		t.Fatalf("a preview slower than ResponseHeaderTimeout = %d, want 502", code)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the 502 took %v", d)
	}
	if code, body, _ := do(t, c, "GET", "http://"+hostA+"/slow?ms=10"); code != 200 || body != "slow done" {
		t.Fatalf("a fast enough request = %d %q", code, body)
	}
	if got := conns.Load(); got != 2 {
		t.Errorf("backend connections = %d, want 2: the stream that timed out is not reused", got)
	}
}

// TestFastPathDoesNotRepeatARequestThatTimedOut: a preview slower than
// ResponseHeaderTimeout on a pooled stream gets one try, as with
// net/http.Transport. Taken for a stream the agent had closed, it was
// sent again on each pooled stream: a slow report ran four times, and the
// client waited four timeouts for its 502.
func TestFastPathDoesNotRepeatARequestThatTimedOut(t *testing.T) {
	const timeout = 250 * time.Millisecond
	var runs atomic.Int64
	mux := fastMux()
	mux.HandleFunc("/report", func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	})
	addr, _ := streamCountingBackend(t, mux)
	n := startNode(t, nodeOpts{tweak: func(c *Config) { c.ResponseHeaderTimeout = timeout }})
	agentFor(t, n, "token-a", addr)
	c := client(n.public)
	// Concurrent requests leave several idle streams in the pool.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { do(t, c, "GET", "http://"+hostA+"/slow?ms=50") })
	}
	wg.Wait()
	start := time.Now()
	if code, _, _ := do(t, c, "GET", "http://"+hostA+"/report"); code != http.StatusBadGateway {
		t.Fatalf("a preview slower than ResponseHeaderTimeout = %d, want 502", code)
	}
	d := time.Since(start)
	if got := runs.Load(); got != 1 {
		t.Errorf("the preview ran the request %d times, want once", got)
	}
	if d > 3*timeout {
		t.Errorf("the 502 took %v, want about one ResponseHeaderTimeout (%v)", d, timeout)
	}
}

func TestFastPathClientGoneCancelsThePreviewRequest(t *testing.T) {
	canceled := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/wait", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			close(canceled)
		case <-time.After(10 * time.Second):
		}
	})
	addr, _ := streamCountingBackend(t, mux)
	n := startNode(t, nodeOpts{})
	agentFor(t, n, "token-a", addr)
	c := client(n.public)
	c.Timeout = 200 * time.Millisecond
	if _, err := c.Get("http://" + hostA + "/wait"); err == nil {
		t.Fatal("the request did not time out")
	}
	select {
	case <-canceled:
	case <-time.After(3 * time.Second):
		t.Fatal("the preview's request went on after its client left")
	}
}

// scriptConn is a tunnel stream stand-in for fastTransport's unit tests:
// it answers each request written with the next of answers, and after
// that reads EOF, while still passing the idle check (a stream the agent
// closed just after the check).
type scriptConn struct {
	net.Conn
	mu       sync.Mutex
	answers  []string
	pending  bytes.Buffer
	deadline time.Time
	closed   bool
	requests int
}

func (s *scriptConn) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, net.ErrClosed
	}
	if bytes.HasSuffix(p, []byte("\r\n\r\n")) {
		s.requests++
		if len(s.answers) > 0 {
			s.pending.WriteString(s.answers[0])
			s.answers = s.answers[1:]
		}
	}
	return len(p), nil
}

func (s *scriptConn) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, net.ErrClosed
	}
	if !s.deadline.IsZero() && s.deadline.Before(time.Now()) {
		return 0, timeoutError{}
	}
	if s.pending.Len() == 0 {
		return 0, io.EOF
	}
	return s.pending.Read(p)
}

func (s *scriptConn) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deadline = t
	return nil
}

func (s *scriptConn) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

type timeoutError struct{}

func (timeoutError) Error() string { return "deadline" }
func (timeoutError) Timeout() bool { return true }

func TestFastPathRetriesOnlyWhatMayBeRepeated(t *testing.T) {
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	var dialed []*scriptConn
	var mu sync.Mutex
	ft := newFastTransport(&http.Transport{}, func(context.Context, string, string) (net.Conn, error) {
		mu.Lock()
		defer mu.Unlock()
		c := &scriptConn{answers: []string{ok}}
		dialed = append(dialed, c)
		return c, nil
	}, 4, time.Minute, 64<<10, 0)
	send := func(method string) (*http.Response, error) {
		req, _ := http.NewRequest(method, "http://g1.app.test/", nil)
		resp, err := ft.RoundTrip(req)
		if err == nil {
			io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		return resp, err
	}
	// First request: a new stream, answered; it goes back to the pool.
	if _, err := send("GET"); err != nil {
		t.Fatal(err)
	}
	// The pooled stream is dead but looks alive: a GET is sent again on a
	// new stream.
	if resp, err := send("GET"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET on a dead pooled stream = %v, %v; want a retry on a new one", resp, err)
	}
	mu.Lock()
	if len(dialed) != 2 || dialed[0].requests != 2 || dialed[1].requests != 1 {
		t.Fatalf("dials %d, want 2 (the dead stream's request was repeated on a new one)", len(dialed))
	}
	mu.Unlock()
	// A POST may have been acted on: it is not repeated.
	if _, err := send("POST"); err == nil {
		t.Fatal("a POST on a dead pooled stream succeeded; it must not be repeated")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(dialed) != 2 {
		t.Errorf("the POST was sent again on a new stream")
	}
}
