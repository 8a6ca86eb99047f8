package tunnel

import (
	"errors"
	"fmt"
)

// Wire constants (PROTOCOL.md sections 2, 3 and 5).
const (
	// Version is the protocol version this package speaks.
	Version byte = 1

	helloMagic      = "STGT"
	maxHelloBody    = 4096
	maxAnswerBody   = 16384
	maxStreamHeader = 255

	statusAccepted byte = 0
	statusRefused  byte = 1
)

// StreamType is the first byte of every stream.
type StreamType byte

const (
	// StreamPreview is opened by the proxy and carries a client's HTTP
	// connection for one hostname.
	StreamPreview StreamType = 1
	// StreamControl is opened by the agent and carries its calls to the
	// server's agent API.
	StreamControl StreamType = 2
	// StreamGoAway is opened by the proxy to say it is shutting down.
	StreamGoAway StreamType = 3
)

func (t StreamType) String() string {
	switch t {
	case StreamPreview:
		return "preview"
	case StreamControl:
		return "control"
	case StreamGoAway:
		return "goaway"
	}
	return fmt.Sprintf("stream-type-%d", byte(t))
}

// Refusal codes (PROTOCOL.md section 3).
const (
	CodeBadToken = "bad_token"
	CodeVersion  = "version"
	CodeBusy     = "busy"
	CodeInternal = "internal"
)

var (
	// ErrRefused is wrapped by every *Refusal, so errors.Is(err,
	// ErrRefused) tells a refused handshake from a network failure.
	ErrRefused = errors.New("tunnel: refused by proxy")
	// ErrBadToken is what an Authenticator returns for a token it does not
	// know; the proxy answers with code bad_token.
	ErrBadToken = errors.New("tunnel: unknown or revoked token")
	// ErrHostnameNotAllowed is returned when a preview stream is asked for
	// a hostname the session's identity was not granted.
	ErrHostnameNotAllowed = errors.New("tunnel: hostname not allowed for this agent")
	// ErrSessionClosed is returned by operations on a session that ended.
	ErrSessionClosed = errors.New("tunnel: session closed")
	// ErrGoingAway is returned when opening a stream on a session that is
	// draining after a GoAway.
	ErrGoingAway = errors.New("tunnel: session going away")
	// ErrProtocol is wrapped by every malformed-message error.
	ErrProtocol = errors.New("tunnel: protocol error")
	// ErrNotConnected is returned by Agent.OpenControl when the agent has
	// no session and ctx ends before it gets one.
	ErrNotConnected = errors.New("tunnel: agent not connected")
	// ErrServerClosed is returned by Server.Serve after Shutdown.
	ErrServerClosed = errors.New("tunnel: server closed")
)

// Refusal is the proxy's reason for refusing an agent's hello.
type Refusal struct {
	Code   string `json:"code"`
	Reason string `json:"reason"`
	// Retry tells the agent whether trying again later may succeed.
	Retry bool `json:"retry"`
}

func (r *Refusal) Error() string {
	return fmt.Sprintf("tunnel: refused by proxy (%s): %s", r.Code, r.Reason)
}

// Unwrap lets errors.Is(err, ErrRefused) match.
func (r *Refusal) Unwrap() error { return ErrRefused }
