// Package tunnel is Stagely's reverse tunnel: an agent on a preview VM dials
// the edge proxy over TLS, authenticates with a token, and holds one yamux
// session through which the proxy opens preview streams to it and it opens
// control streams to the proxy. PROTOCOL.md beside this file is the wire
// format.
//
// The agent side is Agent (dial, reconnect with backoff, accept loop) with a
// StreamHandler for preview streams (Forward dials a local service). The
// proxy side is Server (TLS listener, handshake, session registry with
// generations, stream cap, heartbeats, GoAway) with an Authenticator and a
// ControlHandler supplied by the caller.
//
// It is not HTTP routing, route tables or TLS certificates: package proxy
// routes requests onto sessions, and the caller brings the tls.Config.
package tunnel
