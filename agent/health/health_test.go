package health_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/agent/health"
	"github.com/stagely-dev/stagely/agent/protocol"
)

func TestCheck(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/warming":
			if calls.Add(1) < 3 {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
		case "/teapot":
			w.WriteHeader(http.StatusTeapot)
			return
		case "/moved":
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()

	fast := func(h protocol.Health) protocol.Health {
		h.Timeout, h.Interval = protocol.Duration(500*time.Millisecond), protocol.Duration(10*time.Millisecond)
		return h
	}
	tests := []struct {
		name    string
		addr    string
		h       protocol.Health
		wantErr string
	}{
		{name: "passes on 200", addr: addr, h: fast(protocol.Health{Path: "/"})},
		{name: "passes once the service warms up", addr: addr, h: fast(protocol.Health{Path: "/warming"})},
		{name: "a redirect counts as up", addr: addr, h: fast(protocol.Health{Path: "/moved"})},
		{name: "expected status must match", addr: addr, h: fast(protocol.Health{Path: "/", ExpectStatus: 204}), wantErr: "status 200, want 204"},
		{name: "an unexpected status fails", addr: addr, h: fast(protocol.Health{Path: "/teapot"}), wantErr: "status 418"},
		{name: "tcp check passes on an open port", addr: addr, h: fast(protocol.Health{})},
		{name: "tcp check fails on a closed port", addr: closedAddr, h: fast(protocol.Health{}), wantErr: "connect"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := health.Check(context.Background(), tt.addr, tt.h)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, health.ErrUnhealthy) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want ErrUnhealthy saying %q", err, tt.wantErr)
			}
		})
	}
}
