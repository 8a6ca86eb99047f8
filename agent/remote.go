package agent

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/stagely-dev/stagely/agent/logs"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// logBatch is the most lines sent in one frame.
const logBatch = protocol.MaxLogLines / 2

// remoteReporter ships one generation's steps and log lines to the server.
// Steps queue without bound (a deploy has a handful) and are sent in
// order, retried until they land: the server decides on them, so a step
// is given up only when the server refuses it or the agent stops. Log
// lines go through a bounded logs.Buffer, so a slow server costs dropped
// lines, never a blocked build.
type remoteReporter struct {
	client *protocol.Client
	req    protocol.LogsRequest
	buf    *logs.Buffer
	logf   func(string, ...any)

	mu     sync.Mutex
	steps  []protocol.StepReport
	closed bool
	ready  chan struct{}

	cancelLogs context.CancelFunc
	stepsDone  chan struct{}
	logsDone   chan struct{}
}

func newRemoteReporter(ctx context.Context, c *protocol.Client, env string, gen int64, lines int, logf func(string, ...any)) *remoteReporter {
	logCtx, cancelLogs := context.WithCancel(ctx)
	r := &remoteReporter{
		client:     c,
		req:        protocol.LogsRequest{EnvironmentID: env, Generation: gen},
		buf:        logs.NewBuffer(lines),
		logf:       logf,
		ready:      make(chan struct{}, 1),
		cancelLogs: cancelLogs,
		stepsDone:  make(chan struct{}),
		logsDone:   make(chan struct{}),
	}
	go func() { defer close(r.stepsDone); r.shipSteps(ctx) }()
	go func() { defer close(r.logsDone); r.shipLogs(logCtx) }()
	return r
}

// Step implements Reporter.
func (r *remoteReporter) Step(s protocol.StepReport) {
	r.mu.Lock()
	r.steps = append(r.steps, s)
	r.mu.Unlock()
	select {
	case r.ready <- struct{}{}:
	default:
	}
}

// Log implements Reporter.
func (r *remoteReporter) Log(l protocol.LogLine) { r.buf.Add(l) }

// Close waits until every step has landed (or the server refused one, or
// the agent is stopping: the steps are what the server decides on, and a
// server that is restarting takes them once it is back), and sends the
// log lines still queued until ctx ends at most.
func (r *remoteReporter) Close(ctx context.Context) {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.buf.Close()
	select {
	case r.ready <- struct{}{}:
	default:
	}
	<-r.stepsDone
	select {
	case <-r.logsDone:
	case <-ctx.Done():
		r.cancelLogs()
		<-r.logsDone
	}
	r.cancelLogs()
}

func (r *remoteReporter) shipSteps(ctx context.Context) {
	for {
		r.mu.Lock()
		var next *protocol.StepReport
		if len(r.steps) > 0 {
			next = &r.steps[0]
		}
		closed := r.closed
		r.mu.Unlock()
		if next == nil {
			if closed {
				return
			}
			select {
			case <-r.ready:
				continue
			case <-ctx.Done():
				return
			}
		}
		for b := newBackoff(); ; {
			err := r.client.Step(ctx, *next)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			if refused(err) {
				// The server's definite answer (the token was revoked, the
				// environment is gone): sending it again cannot help.
				r.logf("environment %s: report step %s: %v; given up", r.req.EnvironmentID, next.Name, err)
				break
			}
			r.logf("environment %s: report step %s: %v; retrying", r.req.EnvironmentID, next.Name, err)
			if !b.wait(ctx) {
				return
			}
		}
		r.mu.Lock()
		r.steps = r.steps[1:]
		r.mu.Unlock()
	}
}

func (r *remoteReporter) shipLogs(ctx context.Context) {
	var stream *protocol.LogStream
	defer func() {
		if stream != nil {
			if err := stream.Close(); err != nil {
				r.logf("environment %s: close log stream: %v", r.req.EnvironmentID, err)
			}
		}
	}()
	b := newBackoff()
	for {
		batch, err := r.buf.Take(ctx, logBatch)
		if errors.Is(err, io.EOF) || ctx.Err() != nil {
			return
		}
		for stream == nil {
			stream, err = r.client.Logs(ctx, r.req)
			if err != nil {
				stream = nil
				r.logf("environment %s: open log stream: %v", r.req.EnvironmentID, err)
				if !b.wait(ctx) {
					return
				}
			}
		}
		if err := stream.Send(batch); err != nil {
			// The batch is lost; the next one goes on a new stream.
			r.logf("environment %s: send %d log lines: %v", r.req.EnvironmentID, len(batch), err)
			stream.Close()
			stream = nil
			if !b.wait(ctx) {
				return
			}
			continue
		}
		b.reset()
	}
}

// backoff waits between retries: jittered, doubling from 500ms to 30s.
type backoff struct{ next time.Duration }

func newBackoff() *backoff { return &backoff{next: 500 * time.Millisecond} }

func (b *backoff) reset() { b.next = 500 * time.Millisecond }

// wait sleeps and reports whether ctx is still alive.
func (b *backoff) wait(ctx context.Context) bool {
	d := b.next/2 + time.Duration(jitter(int64(b.next/2)))
	if b.next *= 2; b.next > 30*time.Second {
		b.next = 30 * time.Second
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
