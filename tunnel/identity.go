package tunnel

import (
	"context"
	"net"
	"strings"
)

// Identity is who an authenticated agent is: the proxy learns it from its
// Authenticator at the handshake and checks it again on every stream.
type Identity struct {
	// Agent identifies the agent; one live session per Agent.
	Agent string
	// Environment is the preview environment the agent serves.
	Environment string
	// Hostnames the agent may serve: exact names, or "*.parent" for every
	// single DNS label under parent. Lowercase, no port, no trailing dot.
	Hostnames []string
}

// Allows reports whether the identity was granted host (already
// normalised: lowercase, no port).
func (id Identity) Allows(host string) bool {
	return HostAllowed(id.Hostnames, host)
}

// HostAllowed reports whether host matches one of the granted patterns:
// equal to an exact name, or a single label under a "*.parent" pattern.
func HostAllowed(patterns []string, host string) bool {
	if host == "" {
		return false
	}
	for _, p := range patterns {
		if p == host {
			return true
		}
		if parent, ok := strings.CutPrefix(p, "*."); ok {
			label, rest, found := strings.Cut(host, ".")
			if found && label != "" && rest == parent {
				return true
			}
		}
	}
	return false
}

// Authenticator turns an agent's token into its identity. The server backs
// it with Postgres (hashed agent tokens); the standalone proxy with a
// static route file. It returns an error wrapping ErrBadToken for a token
// it does not know, or a *Refusal to refuse with its own code and reason;
// any other error is answered as internal and retryable.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (Identity, error)
}

// AuthenticatorFunc adapts a function to Authenticator.
type AuthenticatorFunc func(ctx context.Context, token string) (Identity, error)

// Authenticate calls f.
func (f AuthenticatorFunc) Authenticate(ctx context.Context, token string) (Identity, error) {
	return f(ctx, token)
}

// ControlHandler serves the control streams an agent opens: the relay of
// its calls to the server's agent API. It is called in its own goroutine
// with the stream's channel name and the authenticated identity; it owns
// conn and must close it. ctx ends when the session ends.
type ControlHandler interface {
	ServeControl(ctx context.Context, id Identity, channel string, conn net.Conn)
}

// ControlHandlerFunc adapts a function to ControlHandler.
type ControlHandlerFunc func(ctx context.Context, id Identity, channel string, conn net.Conn)

// ServeControl calls f.
func (f ControlHandlerFunc) ServeControl(ctx context.Context, id Identity, channel string, conn net.Conn) {
	f(ctx, id, channel, conn)
}

// StreamHandler serves the preview streams the proxy opens to an agent. It
// is called in its own goroutine with the hostname the stream is for; it
// owns conn and must close it.
type StreamHandler interface {
	ServeStream(ctx context.Context, hostname string, conn net.Conn)
}

// StreamHandlerFunc adapts a function to StreamHandler.
type StreamHandlerFunc func(ctx context.Context, hostname string, conn net.Conn)

// ServeStream calls f.
func (f StreamHandlerFunc) ServeStream(ctx context.Context, hostname string, conn net.Conn) {
	f(ctx, hostname, conn)
}
