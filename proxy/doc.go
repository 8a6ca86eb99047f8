// Package proxy is Stagely's edge proxy: it routes a request by its Host
// to the tunnel session of the agent serving that preview, on this node or,
// over an encrypted, authenticated internal hop, on the node that holds it. It keeps
// the shared route table (host → environment → agent → proxy node) fresh
// while its agents are connected, and serves the 404 and 502 pages.
//
// Forwarding is net/http/httputil.ReverseProxy with a Transport whose
// dialer opens a tunnel stream, so WebSockets, server-sent events,
// streaming and large bodies pass as they would through any Go proxy.
//
// It is not TLS certificate management (package proxy/certs obtains them;
// ServeTLS takes its *tls.Config), nor the tunnel protocol (package
// tunnel), nor the agent API behind control streams (the caller's
// tunnel.ControlHandler).
package proxy
