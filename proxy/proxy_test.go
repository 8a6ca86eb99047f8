package proxy

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRoutingAndPages(t *testing.T) {
	n := startNode(t, nodeOpts{})
	be := backend(t)
	agentFor(t, n, "token-a", be.addr)
	// A known host whose agent never connected.
	if err := n.Routes().PutHost(t.Context(), "gone.preview.test", "env-gone", "agent-gone", 0); err != nil {
		t.Fatal(err)
	}
	c := client(n.public)
	tests := []struct {
		name       string
		url        string
		wantStatus int
		wantBody   string
	}{
		{"a routed host reaches its preview", "http://" + hostA + "/hello", 200, "hello from " + hostA},
		{"the Host is lowercased and its port stripped", "http://A1.Preview.Test:8080/hello", 200, "hello from A1.Preview.Test:8080"},
		{"an unknown host gets the 404 page", "http://nope.preview.test/hello", 404, "No preview here"},
		{"a host outside the preview domain gets the 404 page", "http://a1.elsewhere.test/hello", 404, "No preview here"},
		{"two labels under the preview domain get the 404 page", "http://x.a1.preview.test/hello", 404, "No preview here"},
		{"an IP literal gets the 404 page", "http://127.0.0.1/hello", 404, "No preview here"},
		{"a known host whose agent is gone gets the 502 page", "http://gone.preview.test/hello", 502, "not reachable right now"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			status, body := get(t, c, tt.url)
			if status != tt.wantStatus || !strings.Contains(body, tt.wantBody) {
				t.Fatalf("GET %s = %d %q, want %d containing %q", tt.url, status, body, tt.wantStatus, tt.wantBody)
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("took %v", d)
			}
		})
	}
}

func TestForwardedAndHopByHopHeaders(t *testing.T) {
	n := startNode(t, nodeOpts{})
	be := backend(t)
	agentFor(t, n, "token-a", be.addr)
	req, _ := http.NewRequest("GET", "http://"+hostA+"/headers", nil)
	req.Header.Set("X-Forwarded-For", "6.6.6.6")
	req.Header.Set("X-Forwarded-Host", "evil.example")
	req.Header.Set("X-Forwarded-Proto", "https")
	req.Header.Set("Forwarded", "for=6.6.6.6")
	req.Header.Set("X-Real-Ip", "6.6.6.6")
	req.Header.Set("Stagely-Hop", "v1 1 forged")
	req.Header.Set("Connection", "X-Drop-Me")
	req.Header.Set("X-Drop-Me", "1")
	req.Header.Set("Proxy-Authorization", "Basic Zm9vOmJhcg==")
	req.Header.Set("X-App", "kept")
	resp, err := client(n.public).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		Host   string
		Header http.Header
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	h := got.Header
	checks := []struct {
		name, header, want string
	}{
		{"X-Forwarded-For is the proxy's view of the client", "X-Forwarded-For", "127.0.0.1"},
		{"X-Forwarded-Host is the request's host", "X-Forwarded-Host", hostA},
		{"X-Forwarded-Proto is the listener's scheme", "X-Forwarded-Proto", "http"},
		{"Forwarded from the client is dropped", "Forwarded", ""},
		{"X-Real-Ip from the client is dropped", "X-Real-Ip", ""},
		{"the hop signature never reaches a preview", "Stagely-Hop", ""},
		{"a header named in Connection is dropped", "X-Drop-Me", ""},
		{"Proxy-Authorization is dropped", "Proxy-Authorization", ""},
		{"an ordinary header is kept", "X-App", "kept"},
	}
	for _, c := range checks {
		if v := strings.Join(h.Values(c.header), ","); v != c.want {
			t.Errorf("%s: %s = %q, want %q", c.name, c.header, v, c.want)
		}
	}
	if got.Host != hostA {
		t.Errorf("Host = %q, want %q", got.Host, hostA)
	}
}

// TestClientForwardingHeadersNeverReachThePreview: X-Forwarded-* names a
// family, and frameworks read more of it than For, Host and Proto (Rack
// takes the scheme from X-Forwarded-Ssl and X-Forwarded-Scheme, Spring the
// base path from X-Forwarded-Prefix): a visitor who sends any of them must
// not speak for the proxy, whichever path the request takes.
func TestClientForwardingHeadersNeverReachThePreview(t *testing.T) {
	store1 := openValkey(t)
	store2 := &Valkey{c: store1.c, prefix: store1.prefix}
	n1 := startNode(t, nodeOpts{routes: store1, multi: true})
	n2 := startNode(t, nodeOpts{routes: store2, multi: true, ca: n1.ca})
	agentFor(t, n1, "token-a", backend(t).addr)
	forged := []string{"X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Ssl",
		"X-Forwarded-Scheme", "X-Forwarded-Server", "X-Forwarded-Protocol"}
	tests := []struct {
		name, via, method, body string
	}{
		{"a request without a body (fast path)", n1.public, "GET", ""},
		{"a request with a body", n1.public, "POST", "x"},
		{"a request across the internal hop", n2.public, "GET", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, "http://"+hostA+"/headers", strings.NewReader(tt.body))
			for _, k := range forged {
				req.Header.Set(k, "forged")
			}
			resp, err := client(tt.via).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var got struct{ Header http.Header }
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
				t.Fatal(err)
			}
			for _, k := range forged {
				if v := got.Header.Values(k); len(v) > 0 {
					t.Errorf("%s = %q reached the preview", k, v)
				}
			}
			if v := got.Header.Get("X-Forwarded-Proto"); v != "http" {
				t.Errorf("X-Forwarded-Proto = %q, want the proxy's own", v)
			}
		})
	}
}

func TestStaticRouteFile(t *testing.T) {
	// Some editors start a file with a byte-order mark.
	good := "\ufeff" + `# standalone routes
app.localhost        token-one-0123456789
API.app.localhost.   token-one-0123456789
*.demo.localhost     token-two-0123456789
`
	s, err := ParseStaticRoutes("routes", strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.Authenticate(t.Context(), "token-one-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(id.Hostnames, ",") != "api.app.localhost,app.localhost" || id.Agent == "" || id.Environment == "" {
		t.Fatalf("identity = %+v", id)
	}
	if _, err := s.Authenticate(t.Context(), "token-nope-0123456789"); err == nil {
		t.Fatal("unknown token accepted")
	}
	bad := []struct{ name, file, want string }{
		{"three fields", "a.localhost tok extra\n", "routes:1"},
		{"a short token", "a.localhost short\n", "shorter than 16"},
		{"a hostname twice", "a.localhost token-one-0123456789\na.localhost token-two-0123456789\n", "already listed on line 1"},
		{"a port in the hostname", "a.localhost:80 token-one-0123456789\n", "not a hostname"},
	}
	for _, b := range bad {
		if _, err := ParseStaticRoutes("routes", strings.NewReader(b.file)); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s: err = %v, want it to mention %q", b.name, err, b.want)
		}
	}
}

// The route file holds secrets: with its columns swapped, the first field
// is the token, and an error that quoted it would put it in the logs. A
// file without a route is refused: it is read only at start, so the proxy
// could only answer 404.
func TestStaticRouteFileErrorsQuoteNoToken(t *testing.T) {
	const secret = "s3cret/Token+0123456789="
	bad := []struct{ name, file, want string }{
		{"swapped columns", secret + " app.localhost\n", "routes:1"},
		{"swapped, a short hostname", "s3cret.token.0123456789 a.localhost\n", "routes:1"},
		{"swapped twice, long hostnames", "s3cret.token.0123456789 app.example.localhost\ns3cret.token.0123456789 api.example.localhost\n", "routes:2"},
		{"nothing but comments", "# app.localhost token\n\n", "no routes"},
		{"empty", "", "no routes"},
	}
	for _, b := range bad {
		_, err := ParseStaticRoutes("routes", strings.NewReader(b.file))
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s: err = %v, want it to mention %q", b.name, err, b.want)
			continue
		}
		for _, tok := range []string{secret, "s3cret.token.0123456789"} {
			if strings.Contains(err.Error(), tok) {
				t.Errorf("%s: err = %v quotes the token", b.name, err)
			}
		}
	}
}

func TestNormalizeHost(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"abc.preview.test", "abc.preview.test", true},
		{"ABC.Preview.Test:8443", "abc.preview.test", true},
		{"abc.preview.test.", "abc.preview.test", true},
		{"127.0.0.1:80", "", false},
		{"[::1]:80", "", false},
		{"a..b", "", false},
		{"", "", false},
		{"a b.test", "", false},
		{strings.Repeat("a", 64) + ".test", "", false},
	}
	for _, tt := range tests {
		got, ok := normalizeHost(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("normalizeHost(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
	under := []struct {
		host string
		want bool
	}{
		{"abc.preview.test", true},
		{"x.abc.preview.test", false},
		{"preview.test", false},
		{"abcpreview.test", false},
	}
	for _, u := range under {
		if got := underDomain(u.host, "preview.test"); got != u.want {
			t.Errorf("underDomain(%q) = %v, want %v", u.host, got, u.want)
		}
	}
}
