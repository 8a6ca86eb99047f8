package protocol

import (
	"errors"
	"fmt"
)

// Code classifies a failed call on the wire.
type Code string

// Error codes. A Handler returns errors wrapping the sentinel values below
// to choose the code; any other error travels as CodeInternal with a
// generic message, so server internals never reach an agent.
const (
	CodeBadRequest   Code = "bad_request"
	CodeUnauthorized Code = "unauthorized"
	CodeTokenUsed    Code = "token_used"
	CodeNotFound     Code = "not_found"
	CodeInternal     Code = "internal"
)

// Sentinel errors, for errors.Is on both ends.
var (
	// ErrBadRequest: the request is malformed or of another version.
	ErrBadRequest = errors.New("bad request")
	// ErrUnauthorized: the agent or bootstrap token is unknown or revoked.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrTokenUsed: the bootstrap token was already exchanged for another
	// agent token.
	ErrTokenUsed = errors.New("bootstrap token already used")
	// ErrNotFound: no such deployment or source for this agent.
	ErrNotFound = errors.New("not found")
	// ErrInternal: the server failed; retry later.
	ErrInternal = errors.New("internal server error")
	// ErrFrameTooLarge: a frame announced more bytes than the limit.
	ErrFrameTooLarge = errors.New("frame too large")
	// ErrSourceCorrupt: a source stream ended short or its checksum did
	// not match its trailer.
	ErrSourceCorrupt = errors.New("source stream corrupt")
)

var codes = []struct {
	code Code
	err  error
}{
	{CodeBadRequest, ErrBadRequest},
	{CodeUnauthorized, ErrUnauthorized},
	{CodeTokenUsed, ErrTokenUsed},
	{CodeNotFound, ErrNotFound},
	{CodeInternal, ErrInternal},
}

// Error is a failed call as it travels.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

// Error implements error.
func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Message) }

// Unwrap maps the code back to its sentinel, so errors.Is works on the
// agent's side.
func (e *Error) Unwrap() error {
	for _, c := range codes {
		if c.code == e.Code {
			return c.err
		}
	}
	return ErrInternal
}

// wireError turns a handler's error into what the agent may see.
func wireError(err error) *Error {
	for _, c := range codes {
		if c.code != CodeInternal && errors.Is(err, c.err) {
			return &Error{Code: c.code, Message: err.Error()}
		}
	}
	return &Error{Code: CodeInternal, Message: "internal server error"}
}
