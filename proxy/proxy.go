package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/stagely-dev/stagely/tunnel"
)

// Proxy is one proxy node: the tunnel listener for agents, the public
// HTTP(S) listeners, and (with several nodes) the internal hop listener.
type Proxy struct {
	cfg    Config
	node   string
	tun    *tunnel.Server
	routes RouteStore
	res    *resolver
	log    zerolog.Logger

	bufs     *bufferPool
	errorLog *log.Logger
	rp       *httputil.ReverseProxy
	tr       *fastTransport
	hopRP    *httputil.ReverseProxy
	hopTr    *http.Transport
	hopTLS   *hopTLS // nil without a HopSecret

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	servers  []*http.Server
	draining bool // Shutdown or Close began: no new Serve
	// upgraded holds the client connections that upgrades (WebSocket)
	// took over: http.Server forgets a hijacked connection, so neither its
	// Shutdown waits for one nor its Close ends it.
	upgraded map[net.Conn]struct{}
	upgrades atomic.Int64 // upgrade handlers running
}

// New checks cfg and returns a node that is not yet listening.
func New(cfg Config) (*Proxy, error) {
	cfg = cfg.withDefaults()
	if err := cfg.verify(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		cfg:      cfg,
		node:     cfg.Node,
		routes:   cfg.Routes,
		log:      cfg.Logger.With().Str("component", "proxy").Logger(),
		bufs:     newBufferPool(),
		ctx:      ctx,
		cancel:   cancel,
		upgraded: map[net.Conn]struct{}{},
	}
	if p.node == "" {
		p.node = localNode
	}
	p.errorLog = log.New(zerologWriter{p.log}, "", 0)
	if len(cfg.HopSecret) > 0 {
		var err error
		if p.hopTLS, err = newHopTLS(cfg.HopSecret); err != nil {
			cancel()
			return nil, err
		}
	}
	cacheTTL := cfg.RouteCacheTTL
	if cacheTTL < 0 {
		cacheTTL = 0
	}
	p.res = newResolver(cfg.Routes, cacheTTL, 100_000)
	tun, err := tunnel.NewServer(tunnel.ServerConfig{
		TLS:           cfg.TunnelTLS,
		Authenticator: cfg.Authenticator,
		Control:       cfg.Control,
		OnSessionUp:   p.sessionUp,
		OnSessionDown: p.sessionDown,
		Tunnel:        cfg.Tunnel,
	})
	if err != nil {
		cancel()
		return nil, err
	}
	p.tun = tun
	p.rp, p.tr = p.newTunnelProxy()
	p.hopRP, p.hopTr = p.newHopProxy()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.refreshLoop()
	}()
	return p, nil
}

// Tunnel is the node's tunnel server: its sessions, by agent.
func (p *Proxy) Tunnel() *tunnel.Server { return p.tun }

// Routes is the node's route table.
func (p *Proxy) Routes() RouteStore { return p.routes }

// ServeTunnel accepts agents on ln, a plain TCP listener (TLS is run by
// the tunnel, within its handshake timeout).
func (p *Proxy) ServeTunnel(ctx context.Context, ln net.Listener) error {
	return p.tun.Serve(ctx, ln)
}

// Serve serves public plain HTTP on ln: local use, where *.localhost
// names resolve to the loopback, or behind a TLS-terminating balancer, or
// port 80 beside ServeTLS (wrapped by Config.WrapPlainHTTP for ACME
// challenges).
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	var h http.Handler = p
	if p.cfg.WrapPlainHTTP != nil {
		h = p.cfg.WrapPlainHTTP(h)
	}
	return p.serveHTTP(ctx, ln, h, nil)
}

// ServeTLS serves public HTTPS on ln with tc, whose GetCertificate (or
// Certificates) the caller provides: package proxy/certs in production.
func (p *Proxy) ServeTLS(ctx context.Context, ln net.Listener, tc *tls.Config) error {
	if tc == nil {
		return errors.New("proxy: ServeTLS needs a TLS config")
	}
	return p.serveHTTP(ctx, ln, p, tc)
}

// ServeHop serves the internal hop on ln: requests from other nodes,
// over TLS derived from HopSecret (hoptls.go) and signed with it. Bind it to an address only the nodes reach.
func (p *Proxy) ServeHop(ctx context.Context, ln net.Listener) error {
	if len(p.cfg.HopSecret) == 0 {
		return errors.New("proxy: ServeHop needs a HopSecret")
	}
	return p.serveHTTP(ctx, ln, p.hopHandler(), p.hopTLS.server)
}

func (p *Proxy) serveHTTP(ctx context.Context, ln net.Listener, h http.Handler, tc *tls.Config) error {
	srv := &http.Server{
		Handler:           p.trackUpgrades(h),
		ReadHeaderTimeout: p.cfg.ReadHeaderTimeout,
		IdleTimeout:       p.cfg.IdleTimeout,
		MaxHeaderBytes:    p.cfg.MaxHeaderBytes,
		ErrorLog:          p.errorLog,
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	if tc != nil {
		tc = tc.Clone()
		if len(tc.NextProtos) == 0 {
			// HTTP/1.1 only: upgrades (WebSocket) and streaming pass through
			// ReverseProxy as they are.
			tc.NextProtos = []string{"http/1.1"}
		}
		srv.TLSConfig = tc
		ln = tls.NewListener(ln, tc)
	}
	p.mu.Lock()
	if p.draining {
		p.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	p.servers = append(p.servers, srv)
	p.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return http.ErrServerClosed
	}
	return fmt.Errorf("proxy serve on %s: %w", ln.Addr(), err)
}

// LiveRoute reports whether host has a route whose agent is connected:
// the question certmagic's on-demand DecisionFunc asks before issuing.
func (p *Proxy) LiveRoute(ctx context.Context, host string) (bool, error) {
	h, ok := normalizeHost(host)
	if !ok || !underDomain(h, p.cfg.PreviewDomain) {
		return false, nil
	}
	r, err := p.res.resolve(ctx, h, false)
	if errors.Is(err, ErrNoRoute) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return r.Node != "", nil
}

// HasRoute returns nil when name has a live route and an error wrapping
// ErrNoRoute otherwise: certs.Config.HasRoute, the on-demand
// DecisionFunc's question.
func (p *Proxy) HasRoute(ctx context.Context, name string) error {
	ok, err := p.LiveRoute(ctx, name)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s: %w", name, ErrNoRoute)
	}
	return nil
}

// Shutdown drains the node: it stops accepting agents and sends them
// GoAway (they reconnect, to another node if there is one), stops its
// listeners and lets in-flight requests finish, then closes the tunnel
// sessions, withdrawing their routes. ctx bounds the wait.
func (p *Proxy) Shutdown(ctx context.Context) error {
	tunDone := make(chan error, 1)
	go func() { tunDone <- p.tun.Shutdown(ctx, "proxy shutting down") }()
	p.mu.Lock()
	p.draining = true
	servers := append([]*http.Server(nil), p.servers...)
	p.mu.Unlock()
	var errs []error
	for _, s := range servers {
		if err := s.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := p.waitUpgrades(ctx); err != nil {
		errs = append(errs, err)
	}
	p.closeUpgraded()
	p.tr.CloseIdleConnections()
	if err := <-tunDone; err != nil {
		errs = append(errs, err)
	}
	p.close()
	return errors.Join(errs...)
}

// Close stops everything at once.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.draining = true
	servers := append([]*http.Server(nil), p.servers...)
	p.mu.Unlock()
	for _, s := range servers {
		s.Close()
	}
	p.closeUpgraded()
	p.tun.Close()
	p.close()
}

func (p *Proxy) close() {
	p.mu.Lock()
	p.cancel()
	p.mu.Unlock()
	p.tr.CloseIdleConnections()
	p.hopTr.CloseIdleConnections()
	p.wg.Wait()
}

// trackUpgrades counts h's upgrade requests while they run and records
// the connections they take over. Other requests need nothing:
// http.Server.Shutdown waits for them.
func (p *Proxy) trackUpgrades(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.Header["Upgrade"]) == 0 {
			h.ServeHTTP(w, r)
			return
		}
		p.upgrades.Add(1)
		uw := &upgradeWriter{ResponseWriter: w, p: p}
		defer func() {
			if uw.conn != nil {
				p.mu.Lock()
				delete(p.upgraded, uw.conn)
				p.mu.Unlock()
			}
			p.upgrades.Add(-1)
		}()
		h.ServeHTTP(uw, r)
	})
}

// upgradeWriter records the connection an upgrade hijacks.
type upgradeWriter struct {
	http.ResponseWriter
	p    *Proxy
	conn net.Conn
}

func (u *upgradeWriter) Unwrap() http.ResponseWriter { return u.ResponseWriter }

func (u *upgradeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(u.ResponseWriter).Hijack()
	if err == nil {
		u.p.mu.Lock()
		u.p.upgraded[c] = struct{}{}
		u.p.mu.Unlock()
		u.conn = c
	}
	return c, brw, err
}

// upgradePoll is how often Shutdown looks whether the upgrades ended.
const upgradePoll = 20 * time.Millisecond

// waitUpgrades waits until no upgrade runs, or ctx ends.
func (p *Proxy) waitUpgrades(ctx context.Context) error {
	t := time.NewTicker(upgradePoll)
	defer t.Stop()
	for p.upgrades.Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("proxy shutdown: %d upgraded connections (WebSocket) still open: %w", p.upgrades.Load(), ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// closeUpgraded ends the upgraded connections still open.
func (p *Proxy) closeUpgraded() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.upgraded {
		c.Close()
		delete(p.upgraded, c)
	}
}

// zerologWriter sends net/http's own log lines (TLS handshake errors, bad
// requests) to the proxy's logger at debug level.
type zerologWriter struct{ l zerolog.Logger }

func (z zerologWriter) Write(b []byte) (int, error) {
	z.l.Debug().Msg(string(b))
	return len(b), nil
}
