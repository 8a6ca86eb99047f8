package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"time"
)

// The internal hop: a node that receives a request for an agent connected
// to another node forwards it there, over TLS and signed with the nodes'
// shared secret.
// The receiving node's hop listener serves only signed requests; its
// public listener never looks at the signature header, and every node
// deletes it from what it forwards, so a client can neither forge nor
// replay one through a public port.
const hopHeader = "Stagely-Hop"

// hopRefusedHeader marks the hop listener's own refusal of a request, so
// that the sending node answers its visitor with the 502 page and says
// why, instead of passing a bare 401 on.
const hopRefusedHeader = "Stagely-Hop-Refused"

type hopKey struct{}

// hopTo forwards r to node.
func (p *Proxy) hopTo(w http.ResponseWriter, r *http.Request, node string) {
	p.hopRP.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), hopKey{}, node)))
}

func (p *Proxy) newHopProxy() (*httputil.ReverseProxy, *http.Transport) {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		DialContext: d.DialContext,
		// A node that is frozen (paused, wedged) still has its kernel
		// accept connections: without this bound the handshake, and the
		// visitor, would wait for ever.
		TLSHandshakeTimeout:    5 * time.Second,
		MaxIdleConnsPerHost:    128,
		IdleConnTimeout:        90 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: int64(p.cfg.MaxHeaderBytes),
		DisableCompression:     true,
		WriteBufferSize:        32 << 10,
		ReadBufferSize:         32 << 10,
	}
	if p.hopTLS != nil {
		tr.TLSClientConfig = p.hopTLS.client
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			node := pr.In.Context().Value(hopKey{}).(string)
			pr.Out.URL.Scheme = "https"
			pr.Out.URL.Host = node
			pr.Out.Host = pr.In.Host
			setForwarded(pr, false)
			pr.Out.Header.Set(hopHeader, p.signHop(time.Now(), pr.Out))
		},
		Transport:  tr,
		BufferPool: p.bufs,
		ModifyResponse: func(resp *http.Response) error {
			if resp.Header.Get(hopRefusedHeader) != "" {
				return errors.New("the node refused the request's signature: the nodes' hop secrets or clocks differ")
			}
			return nil
		},
		ErrorHandler: p.hopError,
		ErrorLog:     p.errorLog,
	}
	return rp, tr
}

// hopError answers a failed hop with the 502 page and says why at warn
// level: a node that cannot reach another (a wrong address, a hop secret
// that differs between them, a node that is gone) fails every preview
// held there, which an operator must hear of.
func (p *Proxy) hopError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return
	}
	node, _ := r.Context().Value(hopKey{}).(string)
	ev := p.log.Warn().Err(err).Str("host", r.Host).Str("node", node)
	if errors.As(err, new(x509.UnknownAuthorityError)) {
		// Each node derives the hop's CA from its secret.
		ev = ev.Str("cause", "the nodes' hop secrets differ")
	}
	ev.Msg("internal hop to another proxy node failed")
	unreachablePage(w, r.Host)
}

// hopPayload is what the signature covers: the request line, the host,
// and the forwarded headers the receiving node will trust.
func hopPayload(ts string, r *http.Request) []byte {
	var b strings.Builder
	for _, s := range []string{"stagely-hop-v1", ts, r.Method, r.Host, r.URL.RequestURI(),
		r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Host"), r.Header.Get("X-Forwarded-Proto")} {
		b.WriteString(s)
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

func (p *Proxy) hopMAC(ts string, r *http.Request) []byte {
	m := hmac.New(sha256.New, p.cfg.HopSecret)
	m.Write(hopPayload(ts, r))
	return m.Sum(nil)
}

// signHop returns the hop header's value for r: "v1 <unix seconds> <mac>".
func (p *Proxy) signHop(now time.Time, r *http.Request) string {
	ts := strconv.FormatInt(now.Unix(), 10)
	return "v1 " + ts + " " + base64.RawURLEncoding.EncodeToString(p.hopMAC(ts, r))
}

// verifyHop checks r's hop header: well-formed, fresh, and signed with
// the shared secret (compared in constant time).
func (p *Proxy) verifyHop(now time.Time, r *http.Request) bool {
	parts := strings.Fields(r.Header.Get(hopHeader))
	if len(parts) != 3 || parts[0] != "v1" {
		return false
	}
	sec, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return false
	}
	if d := now.Sub(time.Unix(sec, 0)); d > p.cfg.HopSkew || d < -p.cfg.HopSkew {
		return false
	}
	mac, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return false
	}
	return hmac.Equal(mac, p.hopMAC(parts[1], r))
}

// hopHandler serves the hop listener: signed requests only.
func (p *Proxy) hopHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(p.cfg.HopSecret) == 0 || !p.verifyHop(time.Now(), r) {
			p.log.Warn().Str("remote", r.RemoteAddr).Str("host", r.Host).Msg("internal hop request without a valid signature; rejected")
			w.Header().Set(hopRefusedHeader, "1")
			http.Error(w, "unauthenticated", http.StatusUnauthorized)
			return
		}
		r.Header.Del(hopHeader)
		p.route(w, r, true)
	})
}
