package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"time"

	"github.com/stagely-dev/stagely/tunnel"
)

// target is what one request is forwarded to; it rides in the request's
// context from ServeHTTP to the Transport's dialer.
type target struct {
	sess *tunnel.Session
	host string
	// dialKey names the Transport's connection pool: one per session
	// generation and hostname, so a reconnected agent's new session never
	// gets a connection of the old one, and one hostname's stream never
	// serves another's.
	dialKey string
	// trusted: the request came over the authenticated hop, so its
	// X-Forwarded-* headers are the first node's and are kept.
	trusted bool
}

type targetKey struct{}

// ServeHTTP routes a public request by its Host.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.route(w, r, false)
}

func (p *Proxy) route(w http.ResponseWriter, r *http.Request, viaHop bool) {
	host, ok := normalizeHost(r.Host)
	if !ok || !underDomain(host, p.cfg.PreviewDomain) {
		notFoundPage(w, r.Host)
		return
	}
	ctx := r.Context()
	route, err := p.res.resolve(ctx, host, false)
	sess := p.localSession(route)
	if err == nil && sess == nil && route.Node == p.node {
		// The cached answer says here, but the session is gone: ask the
		// table again (the agent may have moved to another node).
		route, err = p.res.resolve(ctx, host, true)
		sess = p.localSession(route)
	}
	switch {
	case errors.Is(err, ErrNoRoute):
		notFoundPage(w, host)
		return
	case err != nil:
		p.log.Warn().Err(err).Str("host", host).Msg("route table lookup failed")
		routeTableDownPage(w, host)
		return
	case route.Node == "":
		unreachablePage(w, host)
		return
	case route.Node != p.node:
		if viaHop || p.cfg.Node == "" {
			// Never a second hop: the node that was named does not hold
			// the session either.
			unreachablePage(w, host)
			return
		}
		p.hopTo(w, r, route.Node)
		return
	case sess == nil:
		unreachablePage(w, host)
		return
	}
	// Authorisation on every request: the session must belong to the
	// environment the route names and have been granted this hostname,
	// whatever the route table says.
	id := sess.Identity()
	if id.Environment != route.Environment || !id.Allows(host) {
		p.log.Warn().Str("host", host).Str("route_environment", route.Environment).
			Str("agent", id.Agent).Str("agent_environment", id.Environment).
			Msg("route points at an agent not allowed to serve this host; refused")
		unreachablePage(w, host)
		return
	}
	t := &target{sess: sess, host: host, trusted: viaHop,
		dialKey: "g" + strconv.FormatUint(sess.Generation(), 36) + "." + host}
	p.rp.ServeHTTP(w, r.WithContext(context.WithValue(ctx, targetKey{}, t)))
}

// localSession is route's agent's session on this node, if it has one.
func (p *Proxy) localSession(route Route) *tunnel.Session {
	if route.Agent == "" {
		return nil
	}
	s, ok := p.tun.Lookup(route.Agent)
	if !ok {
		return nil
	}
	return s
}

// newTunnelProxy is the ReverseProxy that forwards onto tunnel streams.
func (p *Proxy) newTunnelProxy() (*httputil.ReverseProxy, *fastTransport) {
	slow := &http.Transport{
		DialContext:  p.dialTunnel,
		MaxIdleConns: 0,
		// Idle connections hold stream slots: keep at most a quarter of
		// a session's cap idle per hostname here, for requests with a
		// body, and half in the fast path's pool.
		MaxIdleConnsPerHost:    max(2, p.cfg.Tunnel.StreamCap()/4),
		IdleConnTimeout:        90 * time.Second,
		ResponseHeaderTimeout:  p.cfg.ResponseHeaderTimeout,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: int64(p.cfg.MaxHeaderBytes),
		DisableCompression:     true,
		WriteBufferSize:        32 << 10,
		ReadBufferSize:         32 << 10,
	}
	tr := newFastTransport(slow, p.dialTunnel, max(2, p.cfg.Tunnel.StreamCap()/2), slow.IdleConnTimeout,
		slow.MaxResponseHeaderBytes, slow.ResponseHeaderTimeout)
	rp := &httputil.ReverseProxy{
		Rewrite:    rewriteToTunnel,
		Transport:  tr,
		BufferPool: p.bufs,
		// The refusal header is the hop listener's word to the sending
		// node: from a preview, it would turn its own answer across the
		// hop into the 502 page and a warning blaming the nodes' secrets.
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Del(hopRefusedHeader)
			return nil
		},
		ErrorHandler: p.proxyError,
		ErrorLog:     p.errorLog,
	}
	return rp, tr
}

func rewriteToTunnel(pr *httputil.ProxyRequest) {
	t := pr.In.Context().Value(targetKey{}).(*target)
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = t.dialKey
	pr.Out.Host = pr.In.Host
	setForwarded(pr, t.trusted)
}

// setForwarded replaces whatever the client sent as X-Forwarded-* (and
// Forwarded, X-Real-Ip) with the proxy's own, unless the request came over
// the authenticated hop, whose headers the first node set.
func setForwarded(pr *httputil.ProxyRequest, trusted bool) {
	h := pr.Out.Header
	h.Del("Forwarded")
	h.Del("X-Real-Ip")
	h.Del(hopHeader)
	// ReverseProxy drops only For, Host and Proto; frameworks trust more
	// of the family (Port, Prefix, Ssl, Scheme), which a client could
	// then set for the proxy. Keys are canonical: net/http made them so.
	for k := range h {
		if strings.HasPrefix(k, "X-Forwarded-") {
			delete(h, k)
		}
	}
	if trusted {
		for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
			if v, ok := pr.In.Header[k]; ok {
				h[k] = v
			}
		}
		return
	}
	pr.SetXForwarded()
}

// dialTunnel opens a preview stream on the request's session. When every
// stream slot is taken it drops the session's idle pooled connections,
// which hold slots, and tries again, until Config.SlotWait has passed: a
// stream that a finished request gives back goes to the pool, not to the
// waiter, so waiting on the slots alone could last until the pool's idle
// timeout.
func (p *Proxy) dialTunnel(ctx context.Context, _, addr string) (net.Conn, error) {
	t, _ := ctx.Value(targetKey{}).(*target)
	if t == nil {
		return nil, fmt.Errorf("dial %s: no tunnel target in context", addr)
	}
	deadline := time.Now().Add(p.cfg.SlotWait)
	for {
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		c, err := t.sess.OpenPreview(short, t.host)
		cancel()
		if err == nil || !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			return c, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: %w", errPreviewBusy, err)
		}
		p.tr.closeIdleOf(t.sess)
	}
}

// errPreviewBusy is a request that found every stream of its preview's
// session taken for Config.SlotWait.
var errPreviewBusy = errors.New("every stream of the preview's tunnel is in use")

// proxyError answers a failed forward with the 502 page, unless the
// client is already gone.
func (p *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return
	}
	host := r.Host
	if t, ok := r.Context().Value(targetKey{}).(*target); ok {
		host = t.host
	}
	p.log.Debug().Err(err).Str("host", host).Msg("forward failed")
	if errors.Is(err, errPreviewBusy) {
		busyPage(w, host)
		return
	}
	unreachablePage(w, host)
}
