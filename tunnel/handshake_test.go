package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func TestHandshakeAnswers(t *testing.T) {
	ts := startServer(t, ServerConfig{Authenticator: AuthenticatorFunc(func(ctx context.Context, token string) (Identity, error) {
		switch token {
		case "token-a":
			return idA, nil
		case "busy":
			return Identity{}, &Refusal{Code: CodeBusy, Reason: "too many agents", Retry: true}
		case "db-down":
			return Identity{}, errors.New("connection refused")
		}
		return Identity{}, ErrBadToken
	})})
	tests := []struct {
		name     string
		version  byte
		token    string
		wantCode string
		retry    bool
	}{
		{"a known token is accepted with its hostnames", Version, "token-a", "", false},
		{"a wrong token is refused with a reason and no retry", Version, "nope", CodeBadToken, false},
		{"another protocol version is refused", 9, "token-a", CodeVersion, false},
		{"the authenticator's own refusal reaches the agent", Version, "busy", CodeBusy, true},
		{"an authenticator failure is refused as internal and retryable", Version, "db-down", CodeInternal, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tls.Dial("tcp", ts.addr, &tls.Config{RootCAs: ts.ca.Pool(), ServerName: "127.0.0.1"})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := writeHello(c, tt.version, hello{Token: tt.token}); err != nil {
				t.Fatal(err)
			}
			wel, err := readAnswer(c)
			if tt.wantCode == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if wel.Agent != idA.Agent || wel.Environment != idA.Environment || len(wel.Hostnames) != 2 {
					t.Fatalf("welcome = %+v", wel)
				}
				return
			}
			var ref *Refusal
			if !errors.As(err, &ref) || !errors.Is(err, ErrRefused) {
				t.Fatalf("err = %v, want a *Refusal", err)
			}
			if ref.Code != tt.wantCode || ref.Retry != tt.retry || ref.Reason == "" {
				t.Fatalf("refusal = %+v, want code %s retry %v and a reason", ref, tt.wantCode, tt.retry)
			}
			// No session: the proxy closes the connection.
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
				t.Fatalf("after refusal read = %v, want EOF", err)
			}
			if ts.NumSessions() != 0 && tt.wantCode != "" {
				if _, ok := ts.Lookup(idA.Agent); ok && tt.token != "token-a" {
					t.Fatal("a refused hello left a session")
				}
			}
		})
	}
}

func TestAgentRunStopsOnPermanentRefusal(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	a := startAgent(t, ts, "wrong-token", echoHandler())
	select {
	case err := <-a.done:
		a.done <- err // for cleanup
		var ref *Refusal
		if !errors.As(err, &ref) || ref.Code != CodeBadToken {
			t.Fatalf("Run = %v, want bad_token refusal", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("agent with a wrong token kept running")
	}
}

func TestSlowHandshakeIsDropped(t *testing.T) {
	cfg := fastTunnel()
	cfg.HandshakeTimeout = 300 * time.Millisecond
	ts := startServer(t, ServerConfig{Tunnel: cfg})
	tests := []struct {
		name string
		talk func(t *testing.T, c net.Conn) net.Conn
	}{
		{"a client that sends nothing", func(t *testing.T, c net.Conn) net.Conn { return c }},
		{"a client that sends half a hello", func(t *testing.T, c net.Conn) net.Conn { c.Write([]byte("ST")); return c }},
		{"a client that finishes TLS but never says hello", func(t *testing.T, c net.Conn) net.Conn {
			tc := tls.Client(c, &tls.Config{RootCAs: ts.ca.Pool(), ServerName: "127.0.0.1"})
			if err := tc.Handshake(); err != nil {
				t.Fatal(err)
			}
			return tc
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := net.Dial("tcp", ts.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			c := tt.talk(t, raw)
			start := time.Now()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = io.ReadAll(c)
			took := time.Since(start)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("connection still open after %v", took)
			}
			if took > 2*time.Second {
				t.Fatalf("dropped after %v, want about 300ms", took)
			}
		})
	}
}

func TestAgentVerifiesProxyCertificate(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	other, err := NewDevCA()
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAgent(AgentConfig{Addr: ts.addr, Token: "token-a", Handler: echoHandler(), TLS: &tls.Config{RootCAs: other.Pool()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.connect(context.Background()); err == nil {
		t.Fatal("agent connected to a proxy whose certificate it should not trust")
	}
	if ts.NumSessions() != 0 {
		t.Fatal("session registered without a verified handshake")
	}
	// The token goes to whoever answers: a caller cannot turn the check off.
	if _, err := NewAgent(AgentConfig{Addr: ts.addr, Token: "token-a", Handler: echoHandler(), TLS: &tls.Config{InsecureSkipVerify: true}}); err == nil {
		t.Fatal("NewAgent took a TLS config that skips verification")
	}
}

// TestAnotherVersionsHelloOfAnySizeIsRefusedAsVersion: the size limits of
// the hello are version 1's; a later version may send a larger (or empty)
// hello, and its agent must still hear "version" (PROTOCOL.md section 3)
// to report it, not a dropped connection it retries for ever.
func TestAnotherVersionsHelloOfAnySizeIsRefusedAsVersion(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	for _, n := range []int{0, 1, maxHelloBody + 1, 65535} {
		c, err := tls.Dial("tcp", ts.addr, &tls.Config{RootCAs: ts.ca.Pool(), ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		msg := append([]byte(helloMagic), Version+1, byte(n>>8), byte(n))
		msg = append(msg, make([]byte, n)...)
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, err = readAnswer(c)
		c.Close()
		if ref := (*Refusal)(nil); !errors.As(err, &ref) || ref.Code != CodeVersion {
			t.Errorf("hello of version %d with a %d-byte body: %v; want a refusal with code %s", Version+1, n, err, CodeVersion)
		}
	}
}
