package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/stagely-dev/stagely/tunnel"
)

// Config is one proxy node's settings. Zero fields take the defaults named
// on them.
type Config struct {
	// PreviewDomain, e.g. "preview.example.com": only hosts that are a
	// single DNS label under it are looked up; others get the 404 page
	// without touching the route table. Empty: any host with a route is
	// served (standalone use with names such as app.localhost).
	PreviewDomain string

	// Routes is the route table. Default: an in-process Memory, for a
	// single node.
	Routes RouteStore

	// Node is this node's internal hop address as the other nodes dial it
	// (host:port). Empty: a single node, which never hops.
	Node string
	// HopSecret authenticates requests between nodes (HMAC-SHA256): the
	// same on every node, at least 32 bytes. Required when Node is set.
	HopSecret []byte
	// HopSkew is how far a hop request's timestamp may be from this
	// node's clock. Default 30 s.
	HopSkew time.Duration

	// TunnelTLS carries the tunnel listener's certificate (required).
	TunnelTLS *tls.Config
	// Authenticator checks agents' tokens (required).
	Authenticator tunnel.Authenticator
	// Control serves agents' control streams; nil closes them.
	Control tunnel.ControlHandler
	// Tunnel tunes the tunnel sessions.
	Tunnel tunnel.Config

	// AgentTTL is how long an agent's location outlives this node's last
	// refresh of it: a node that dies stops receiving traffic within it.
	// Default 30 s.
	AgentTTL time.Duration
	// HostTTL is the lifetime of the host entries this node publishes from
	// agents' identities, refreshed while they are connected; long, so a
	// preview whose agent is briefly gone answers 502, not 404. Default
	// 1 h.
	HostTTL time.Duration
	// RefreshInterval is how often locations and hosts are re-published.
	// Default AgentTTL/3.
	RefreshInterval time.Duration
	// RouteCacheTTL is how long a route lookup is reused. Negative: no
	// cache. Default 1 s.
	RouteCacheTTL time.Duration

	// ReadHeaderTimeout bounds reading a request's headers (slowloris).
	// Default 10 s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive client connection idle this long.
	// Default 120 s.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's headers, and a response's. Default
	// 64 KiB.
	MaxHeaderBytes int
	// ResponseHeaderTimeout bounds the wait for a preview's response
	// headers. Default 0: none (long polls are legitimate).
	ResponseHeaderTimeout time.Duration
	// SlotWait bounds a request's wait for a stream of its preview's
	// session when every one is taken (long-lived connections, such as
	// WebSockets and event streams, each hold one): past it the visitor
	// gets a 503 page that says the preview is busy, instead of a page
	// that never loads. Default 10 s.
	SlotWait time.Duration

	// WrapPlainHTTP, if set, wraps the handler Serve uses: for example
	// certs.Manager.HTTPHandler, which answers ACME HTTP-01 challenges.
	WrapPlainHTTP func(http.Handler) http.Handler

	// Logger receives the proxy's logs; the zero value discards them.
	Logger zerolog.Logger
}

// localNode is the Node of routes in single-node mode.
const localNode = "local"

// DefaultHostTTL is Config.HostTTL's default.
const DefaultHostTTL = time.Hour

func (c Config) withDefaults() Config {
	// Hosts are compared lowercase and without the trailing dot.
	c.PreviewDomain = strings.ToLower(strings.TrimSuffix(c.PreviewDomain, "."))
	if c.Routes == nil {
		c.Routes = NewMemory()
	}
	if c.HopSkew <= 0 {
		c.HopSkew = 30 * time.Second
	}
	if c.AgentTTL <= 0 {
		c.AgentTTL = 30 * time.Second
	}
	if c.HostTTL <= 0 {
		c.HostTTL = DefaultHostTTL
	}
	if c.RefreshInterval <= 0 {
		c.RefreshInterval = c.AgentTTL / 3
	}
	if c.RouteCacheTTL == 0 {
		c.RouteCacheTTL = time.Second
	}
	if c.ReadHeaderTimeout <= 0 {
		c.ReadHeaderTimeout = 10 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 120 * time.Second
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = 64 << 10
	}
	if c.SlotWait <= 0 {
		c.SlotWait = 10 * time.Second
	}
	return c
}

// ValidDomain reports whether d is a lowercase DNS name without a
// trailing dot, as a PreviewDomain must be.
func ValidDomain(d string) bool {
	h, ok := normalizeHost(d)
	return ok && h == d && !strings.Contains(d, ":")
}

func (c Config) verify() error {
	switch {
	case c.TunnelTLS == nil:
		return errors.New("proxy config: TunnelTLS is required")
	case c.Authenticator == nil:
		return errors.New("proxy config: Authenticator is required")
	case c.Node != "" && len(c.HopSecret) < 32:
		return fmt.Errorf("proxy config: HopSecret must be at least 32 bytes when Node is set (got %d)", len(c.HopSecret))
	case c.Node == localNode:
		return fmt.Errorf("proxy config: Node %q is reserved", localNode)
	case c.PreviewDomain != "" && !ValidDomain(c.PreviewDomain):
		return fmt.Errorf("proxy config: PreviewDomain %q is not a domain name such as preview.example.com", c.PreviewDomain)
	case c.RefreshInterval >= c.AgentTTL:
		return fmt.Errorf("proxy config: RefreshInterval %v must be shorter than AgentTTL %v", c.RefreshInterval, c.AgentTTL)
	}
	return c.Tunnel.Verify()
}
