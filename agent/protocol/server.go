package protocol

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Identity is who an agent token belongs to.
type Identity struct {
	AgentID string
	// EnvironmentID is the one environment the agent serves; the Server
	// refuses calls naming another with ErrNotFound.
	EnvironmentID string
}

// Handler is the server's side of the calls. The lead backs it with
// Postgres; tests with a fake. Return errors wrapping ErrUnauthorized,
// ErrTokenUsed, ErrNotFound or ErrBadRequest to send those codes; any
// other error reaches the agent as CodeInternal, without its text.
type Handler interface {
	// Exchange consumes a bootstrap token and records the hash of the
	// agent token the request proposes. Called again with the same pair
	// it succeeds again (the agent crashed before storing its token);
	// with a used bootstrap token and another agent token it returns
	// ErrTokenUsed.
	Exchange(ctx context.Context, req ExchangeRequest) (ExchangeResponse, error)
	// Authenticate maps an agent token to its identity, or ErrUnauthorized.
	Authenticate(ctx context.Context, token string) (Identity, error)
	// Poll returns the desired deployment when its generation is greater
	// than after, waiting until ctx ends for one to appear; then it
	// returns nil, nil (or ctx's error).
	Poll(ctx context.Context, id Identity, after int64) (*Deployment, error)
	// Source opens the source tarball of a deployment.
	Source(ctx context.Context, id Identity, req SourceRequest) (SourceInfo, io.ReadCloser, error)
	// Step records a step report.
	Step(ctx context.Context, id Identity, r StepReport) error
	// Logs records a batch of log lines.
	Logs(ctx context.Context, id Identity, req LogsRequest, lines []LogLine) error
}

// Server serves calls on streams, one call per stream.
type Server struct {
	Handler Handler
	// MaxWait caps a poll's wait; zero means DefaultMaxWait. Keep it
	// under any idle timeout between agent and server.
	MaxWait time.Duration
}

// DefaultMaxWait is the longest a poll is held when Server.MaxWait is
// zero.
const DefaultMaxWait = 60 * time.Second

// ServeStream serves the one call on rw and closes rw. It returns the
// handler's or the stream's error, for the caller to log; the agent has
// already been answered.
func (s *Server) ServeStream(ctx context.Context, rw io.ReadWriteCloser) error {
	defer rw.Close()
	stop := context.AfterFunc(ctx, func() { rw.Close() })
	defer stop()
	c := &serverCall{rw: rw, fw: frameWriter{w: rw}, fr: frameReader{r: rw}}

	var req Request
	if err := c.fr.readMessage(&req); err != nil {
		return c.fail(fmt.Errorf("read request: %w", err))
	}
	if req.Version != Version {
		return c.fail(fmt.Errorf("protocol version %d, server speaks %d: %w", req.Version, Version, ErrBadRequest))
	}
	if req.Op == OpExchange {
		if req.Exchange == nil || req.Exchange.BootstrapToken == "" || req.Exchange.AgentToken == "" {
			return c.fail(fmt.Errorf("exchange: bootstrap and agent tokens are required: %w", ErrBadRequest))
		}
		resp, err := s.Handler.Exchange(ctx, *req.Exchange)
		if err != nil {
			return c.fail(fmt.Errorf("exchange: %w", err))
		}
		return c.reply(Response{Exchange: &resp})
	}
	id, err := s.Handler.Authenticate(ctx, req.Token)
	if err != nil {
		return c.fail(fmt.Errorf("%s: authenticate: %w", req.Op, err))
	}
	switch {
	case req.Op == OpPoll && req.Poll != nil:
		return s.poll(ctx, c, id, *req.Poll)
	case req.Op == OpSource && req.Source != nil:
		return s.source(ctx, c, id, *req.Source)
	case req.Op == OpStep && req.Step != nil:
		if err := ownEnv(id, req.Step.EnvironmentID); err != nil {
			return c.fail(fmt.Errorf("step: %w", err))
		}
		if err := s.Handler.Step(ctx, id, *req.Step); err != nil {
			return c.fail(fmt.Errorf("step %s of %s: %w", req.Step.Name, req.Step.EnvironmentID, err))
		}
		return c.reply(Response{})
	case req.Op == OpLogs && req.Logs != nil:
		return s.logs(ctx, c, id, *req.Logs)
	}
	return c.fail(fmt.Errorf("op %q without its body: %w", req.Op, ErrBadRequest))
}

func (s *Server) poll(ctx context.Context, c *serverCall, id Identity, req PollRequest) error {
	wait := time.Duration(req.Wait)
	max := s.MaxWait
	if max <= 0 {
		max = DefaultMaxWait
	}
	if wait <= 0 || wait > max {
		wait = max
	}
	pctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	// The agent sends nothing more on a poll: a read that returns means it
	// hung up, and nobody is left to answer. The read ends when
	// ServeStream closes the stream.
	hungUp := make(chan struct{})
	go func() {
		var b [1]byte
		c.rw.Read(b[:])
		close(hungUp)
		cancel()
	}()
	d, err := s.Handler.Poll(pctx, id, req.After)
	select {
	case <-hungUp:
		return fmt.Errorf("poll for %s: agent hung up", id.EnvironmentID)
	default:
	}
	if err != nil && !(errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil) {
		return c.fail(fmt.Errorf("poll for %s: %w", id.EnvironmentID, err))
	}
	if d != nil && d.Generation <= req.After {
		d = nil
	}
	return c.reply(Response{Poll: &PollResponse{Deployment: d}})
}

func (s *Server) source(ctx context.Context, c *serverCall, id Identity, req SourceRequest) error {
	if err := ownEnv(id, req.EnvironmentID); err != nil {
		return c.fail(fmt.Errorf("source: %w", err))
	}
	info, body, err := s.Handler.Source(ctx, id, req)
	if err != nil {
		return c.fail(fmt.Errorf("source of %s@%d: %w", req.EnvironmentID, req.Generation, err))
	}
	defer body.Close()
	if err := c.reply(Response{Source: &info}); err != nil {
		return err
	}
	sum := sha256.New()
	buf := make([]byte, dataChunk)
	var n int64
	for {
		k, rerr := body.Read(buf)
		if k > 0 {
			sum.Write(buf[:k])
			n += int64(k)
			if err := c.fw.writeFrame(kindData, buf[:k]); err != nil {
				return fmt.Errorf("source of %s@%d: send: %w", req.EnvironmentID, req.Generation, err)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			rerr = fmt.Errorf("source of %s@%d: read after %d bytes: %w", req.EnvironmentID, req.Generation, n, rerr)
			_ = c.fw.writeMessage(SourceTrailer{Bytes: n, Error: wireError(rerr)})
			return rerr
		}
	}
	return c.fw.writeMessage(SourceTrailer{Bytes: n, SHA256: hex.EncodeToString(sum.Sum(nil))})
}

func (s *Server) logs(ctx context.Context, c *serverCall, id Identity, req LogsRequest) error {
	if err := ownEnv(id, req.EnvironmentID); err != nil {
		return c.fail(fmt.Errorf("logs: %w", err))
	}
	for {
		var b logBatchIn
		if err := c.fr.readMessage(&b); err != nil {
			return c.fail(fmt.Errorf("logs of %s@%d: %w", req.EnvironmentID, req.Generation, err))
		}
		if len(b.Lines) > 0 {
			if err := s.Handler.Logs(ctx, id, req, b.Lines); err != nil {
				return c.fail(fmt.Errorf("logs of %s@%d: %w", req.EnvironmentID, req.Generation, err))
			}
		}
		if b.Final {
			return c.reply(Response{})
		}
	}
}

// logBatchIn is a LogBatch as the server reads it: its lines are
// counted as they are decoded, and refused past MaxLogLines, before they
// cost memory.
type logBatchIn struct {
	Lines boundedLines `json:"lines"`
	Final bool         `json:"final"`
}

type boundedLines []LogLine

func (l *boundedLines) UnmarshalJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok == nil {
		return nil // null
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return fmt.Errorf("lines: want an array, got %v", tok)
	}
	for dec.More() {
		if len(*l) == MaxLogLines {
			return fmt.Errorf("more than %d lines in one batch", MaxLogLines)
		}
		var line LogLine
		if err := dec.Decode(&line); err != nil {
			return err
		}
		*l = append(*l, line)
	}
	_, err = dec.Token()
	return err
}

func ownEnv(id Identity, env string) error {
	if id.EnvironmentID != "" && env != id.EnvironmentID {
		return fmt.Errorf("environment %q is not this agent's: %w", env, ErrNotFound)
	}
	return nil
}

// serverCall is one call's stream on the server's side.
type serverCall struct {
	rw io.ReadWriteCloser
	fw frameWriter
	fr frameReader
}

func (c *serverCall) reply(r Response) error {
	if err := c.fw.writeMessage(r); err != nil {
		return fmt.Errorf("send response: %w", err)
	}
	return nil
}

// fail answers with err's wire form and returns err.
func (c *serverCall) fail(err error) error {
	_ = c.fw.writeMessage(Response{Error: wireError(err)})
	return err
}
