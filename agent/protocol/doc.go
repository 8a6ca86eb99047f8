// Package protocol is the control protocol between a Stagely agent and the
// Stagely server: the messages (desired deployment, step reports, log
// lines, the bootstrap token exchange), their framing on a byte stream, an
// agent-side Client and a server-side Server that calls a Handler.
//
// Every call runs on a stream of its own (one yamux stream of the tunnel in
// production, a net.Pipe in tests): the agent opens it, writes one Request
// frame, and the server answers. The wire format is written down in
// agent/PROTOCOL.md; keep the two in step.
//
// It is not the tunnel (dialing, TLS, yamux, heartbeats live in package
// tunnel) and it is not the deploy engine (package agent): it carries
// messages and bytes and nothing else.
package protocol
