package protocol

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"
)

// DialFunc opens a fresh stream to the server. In production it opens a
// control stream of the agent's tunnel session; in tests, one end of a
// net.Pipe whose other end a Server serves.
type DialFunc func(ctx context.Context) (io.ReadWriteCloser, error)

// Client is the agent's end of the protocol. Each method opens one stream
// and closes it when the call is over; a Client is safe for concurrent
// use as long as Dial is.
type Client struct {
	// Dial opens a stream per call.
	Dial DialFunc
	// Token is the agent token sent with every call but Exchange.
	Token string
	// PollGrace is how long past its wait a poll may go unanswered before
	// the stream is taken for dead (the server answers within the wait,
	// or sooner); zero means 15 s. Without it a stream that stays open but
	// silent, behind a half-open link, would stop the agent's loop.
	PollGrace time.Duration
}

// Exchange trades a bootstrap token for the agent token the request
// proposes.
func (c *Client) Exchange(ctx context.Context, req ExchangeRequest) (ExchangeResponse, error) {
	resp, err := c.unary(ctx, Request{Op: OpExchange, Exchange: &req})
	if err != nil {
		return ExchangeResponse{}, err
	}
	if resp.Exchange == nil {
		return ExchangeResponse{}, fmt.Errorf("exchange: response without a result: %w", ErrBadRequest)
	}
	return *resp.Exchange, nil
}

// Poll waits up to wait for a deployment newer than generation after. It
// returns nil, nil when none came.
func (c *Client) Poll(ctx context.Context, after int64, wait time.Duration) (*Deployment, error) {
	grace := c.PollGrace
	if grace <= 0 {
		grace = 15 * time.Second
	}
	pctx, cancel := context.WithTimeout(ctx, wait+grace)
	defer cancel()
	resp, err := c.unary(pctx, Request{Op: OpPoll, Token: c.Token, Poll: &PollRequest{After: after, Wait: Duration(wait)}})
	if err != nil {
		if ctx.Err() == nil && pctx.Err() != nil {
			return nil, fmt.Errorf("poll: no answer within %v of the %v asked: %w", grace, wait, err)
		}
		return nil, err
	}
	if resp.Poll == nil {
		return nil, nil
	}
	return resp.Poll.Deployment, nil
}

// Step reports one deploy step.
func (c *Client) Step(ctx context.Context, r StepReport) error {
	_, err := c.unary(ctx, Request{Op: OpStep, Token: c.Token, Step: &r})
	return err
}

// Source opens the source tarball of one deployment. The returned reader
// yields the tarball's bytes and ends with io.EOF only once the trailer
// confirmed their count and checksum; a stream cut short or corrupted
// ends with an error wrapping ErrSourceCorrupt. Close it when done.
func (c *Client) Source(ctx context.Context, req SourceRequest) (*SourceReader, error) {
	st, err := c.open(ctx, Request{Op: OpSource, Token: c.Token, Source: &req})
	if err != nil {
		return nil, err
	}
	var resp Response
	if err := st.readResponse(ctx, &resp); err != nil {
		st.close()
		return nil, fmt.Errorf("source of %s@%d: %w", req.EnvironmentID, req.Generation, err)
	}
	info := SourceInfo{}
	if resp.Source != nil {
		info = *resp.Source
	}
	return &SourceReader{Info: info, st: st, ctx: ctx, sum: sha256.New()}, nil
}

// Logs opens a log stream for one deployment. The stream lives until
// Close or until ctx ends.
func (c *Client) Logs(ctx context.Context, req LogsRequest) (*LogStream, error) {
	st, err := c.open(ctx, Request{Op: OpLogs, Token: c.Token, Logs: &req})
	if err != nil {
		return nil, err
	}
	return &LogStream{st: st, ctx: ctx}, nil
}

// unary makes a call with one request and one response.
func (c *Client) unary(ctx context.Context, req Request) (Response, error) {
	st, err := c.open(ctx, req)
	if err != nil {
		return Response{}, err
	}
	defer st.close()
	var resp Response
	if err := st.readResponse(ctx, &resp); err != nil {
		return Response{}, fmt.Errorf("%s: %w", req.Op, err)
	}
	return resp, nil
}

// stream is one call's stream on the agent's side.
type stream struct {
	rw   io.ReadWriteCloser
	fw   frameWriter
	fr   frameReader
	stop func() bool
}

func (c *Client) open(ctx context.Context, req Request) (*stream, error) {
	if c.Dial == nil {
		return nil, fmt.Errorf("%s: protocol.Client has no Dial", req.Op)
	}
	rw, err := c.Dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: open stream: %w", req.Op, err)
	}
	st := &stream{rw: rw, fw: frameWriter{w: rw}, fr: frameReader{r: rw}}
	// Closing the stream is the only way to interrupt a blocked read or
	// write on an arbitrary io.ReadWriteCloser.
	st.stop = context.AfterFunc(ctx, func() { rw.Close() })
	req.Version = Version
	if err := st.fw.writeMessage(req); err != nil {
		st.close()
		return nil, fmt.Errorf("%s: send request: %w", req.Op, ctxErr(ctx, err))
	}
	return st, nil
}

func (st *stream) close() {
	st.stop()
	st.rw.Close()
}

// readResponse reads a Response and turns a wire error into a Go error.
func (st *stream) readResponse(ctx context.Context, resp *Response) error {
	if err := st.fr.readMessage(resp); err != nil {
		return fmt.Errorf("read response: %w", ctxErr(ctx, err))
	}
	if resp.Error != nil {
		return resp.Error
	}
	return nil
}

// ctxErr prefers the context's error: a stream closed because ctx ended
// reports as cancellation, not as a broken pipe.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// SourceReader reads a source tarball from its stream.
type SourceReader struct {
	// Info is the header the server sent before the data.
	Info SourceInfo

	ctx  context.Context
	st   *stream
	sum  hash.Hash
	n    int64
	rest []byte
	err  error
}

// Read implements io.Reader.
func (r *SourceReader) Read(p []byte) (int, error) {
	for len(r.rest) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		r.err = r.nextFrame()
	}
	n := copy(p, r.rest)
	r.rest = r.rest[n:]
	return n, nil
}

func (r *SourceReader) nextFrame() error {
	kind, payload, err := r.st.fr.next()
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("stream ended after %d bytes without a trailer: %w", r.n, ErrSourceCorrupt)
		}
		return ctxErr(r.ctx, err)
	}
	if kind == kindData {
		r.sum.Write(payload)
		r.n += int64(len(payload))
		r.rest = payload
		return nil
	}
	var t SourceTrailer
	if err := decodeMessage(payload, &t); err != nil {
		return err
	}
	switch {
	case t.Error != nil:
		return fmt.Errorf("server: %w", t.Error)
	case t.Bytes != r.n:
		return fmt.Errorf("got %d bytes, trailer says %d: %w", r.n, t.Bytes, ErrSourceCorrupt)
	case t.SHA256 != "" && t.SHA256 != hex.EncodeToString(r.sum.Sum(nil)):
		return fmt.Errorf("sha256 mismatch: %w", ErrSourceCorrupt)
	}
	return io.EOF
}

// Close ends the call.
func (r *SourceReader) Close() error {
	r.st.close()
	return nil
}

// LogStream sends log batches for one deployment.
// Not safe for concurrent use.
type LogStream struct {
	ctx context.Context
	st  *stream
}

// Send writes one batch. It blocks while the server (or the tunnel's flow
// control) holds it back: callers buffer in front of it.
func (s *LogStream) Send(lines []LogLine) error {
	if err := s.st.fw.writeMessage(LogBatch{Lines: lines}); err != nil {
		return fmt.Errorf("logs: send: %w", ctxErr(s.ctx, err))
	}
	return nil
}

// Close sends the final frame, waits for the server's answer and ends the
// call.
func (s *LogStream) Close() error {
	defer s.st.close()
	if err := s.st.fw.writeMessage(LogBatch{Final: true}); err != nil {
		return fmt.Errorf("logs: send final: %w", ctxErr(s.ctx, err))
	}
	var resp Response
	if err := s.st.readResponse(s.ctx, &resp); err != nil {
		return fmt.Errorf("logs: %w", err)
	}
	return nil
}
