package ghclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/bradleyfalzon/ghinstallation/v2"
	"github.com/rs/zerolog"
)

// Waits follow GitHub's guidance for secondary rate limits: honour
// Retry-After, otherwise wait at least a minute, and back off exponentially
// while the limit persists.
const (
	secondaryDefaultWait = time.Minute
	secondaryMinWait     = time.Second // floor for a Retry-After of 0
	secondaryMaxWait     = 15 * time.Minute
	primaryDefaultWait   = time.Minute // primary limit without a usable reset time
	transientBaseWait    = time.Second
	transientMaxWait     = 30 * time.Second
	// peekLimit bounds how much of an error body is read to classify it or
	// drained before a retry; GitHub's error bodies are far smaller.
	peekLimit = 64 << 10
)

// Retry rule, by outcome of one attempt:
//
//   - Secondary rate limit (403/429 whose body names it, or any 403/429 with
//     Retry-After, or a bare 429): retried for every method, POST included,
//     because GitHub rejected the request without acting on it. The wait is
//     shared by all clients of the creator (see gate).
//   - Primary rate limit (403/429 with X-RateLimit-Remaining: 0 and no
//     mention of a secondary limit): retried for every method, after waiting
//     until X-RateLimit-Reset. Not shared: the limit belongs to one token,
//     not to the app.
//   - 500, 502, 503, 504 and transport errors: retried with jittered
//     exponential backoff only for methods safe to repeat (GET, HEAD,
//     OPTIONS, PUT, PATCH, DELETE). A POST is never re-sent after the server
//     may have seen it: a 5xx or a timeout does not prove GitHub did not
//     create the comment, check run or deployment, and a duplicate is worse
//     than a failed call the handler can report. A POST is retried when it
//     demonstrably never left: the connection was refused (dial error), or
//     the installation token could not be fetched first.
//   - Anything else is returned as it is.
//
// Attempts are bounded by MaxRetries, a request whose body cannot be rewound
// (no GetBody) is sent once, and a wait that would end after the request's
// context deadline is not started: the rate-limit response is returned at
// once so that the caller gets go-github's RateLimitError instead of a
// context error later.

// retrier holds what every client of one creator shares: the settings and the
// secondary-rate-limit gate.
type retrier struct {
	gate       *gate
	maxRetries int
	timeout    time.Duration
	sleep      func(ctx context.Context, d time.Duration) error
	log        zerolog.Logger
}

// wrap is the githubapp.ClientMiddleware; it is applied once per client.
func (r *retrier) wrap(next http.RoundTripper) http.RoundTripper {
	return &retryTransport{retrier: r, next: next}
}

type retryTransport struct {
	*retrier
	next http.RoundTripper
}

type outcomeKind int

const (
	done outcomeKind = iota
	secondaryLimit
	primaryLimit
	transient
)

func (k outcomeKind) String() string {
	switch k {
	case secondaryLimit:
		return "secondary rate limit"
	case primaryLimit:
		return "primary rate limit"
	case transient:
		return "transient failure"
	}
	return "done"
}

// outcome classifies one attempt. wait is the server-stated part of the wait:
// Retry-After (or the default) for a secondary limit, the time until reset
// for a primary limit, a Retry-After floor for a transient failure.
type outcome struct {
	kind outcomeKind
	wait time.Duration
	// notSent means the API request certainly did not reach GitHub, which
	// makes even a POST safe to re-send.
	notSent bool
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	// Per the RoundTripper contract the body is ours to close until it is
	// handed to next.
	bodyHandedOff := false
	defer func() {
		if !bodyHandedOff && req.Body != nil {
			req.Body.Close()
		}
	}()
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	idempotent := isIdempotent(req.Method)

	var tk ticket
	defer func() {
		// A leader that stops (gave up, context ended) must hand the block
		// on, or the parked requests would never move.
		if tk.lead {
			t.gate.abdicate()
		}
	}()

	for attempt := 0; ; attempt++ {
		if !tk.lead {
			var err error
			if tk, err = t.gate.enter(ctx); err != nil {
				return nil, fmt.Errorf("ghclient: %s %s: waiting for a GitHub secondary rate limit to lift: %w", req.Method, req.URL.Path, err)
			}
		}
		if tk.wait > 0 {
			if err := t.sleep(ctx, tk.wait); err != nil {
				return nil, fmt.Errorf("ghclient: %s %s: waiting %s for a GitHub secondary rate limit: %w", req.Method, req.URL.Path, tk.wait, err)
			}
			tk.wait = 0
		}

		areq, cancel, err := t.attemptRequest(ctx, req, attempt)
		if err != nil {
			return nil, err
		}
		bodyHandedOff = true
		resp, err := t.next.RoundTrip(areq)

		var o outcome
		if err != nil {
			cancel()
			if ctx.Err() != nil {
				return nil, err
			}
			o = classifyError(err)
		} else {
			resp = withoutVariedHeaders(resp)
			o = classifyResponse(resp)
		}

		// A leader's probe that is not limited again shows the block is over.
		if tk.lead && o.kind != secondaryLimit {
			t.gate.lift()
			tk = ticket{}
		}

		retryable := o.kind == secondaryLimit || o.kind == primaryLimit ||
			(o.kind == transient && (idempotent || o.notSent))
		var wait time.Duration
		switch {
		case o.kind == secondaryLimit:
			// Recorded even if this request then gives up, so that others
			// still wait.
			wait = t.gate.limited(&tk, o.wait)
		case o.kind == primaryLimit:
			wait = o.wait
		case retryable:
			wait = transientWait(attempt, o.wait)
		}

		if !retryable || attempt >= t.maxRetries || !replayable || endsAfterDeadline(ctx, wait) {
			if err != nil {
				if attempt > 0 {
					return nil, fmt.Errorf("ghclient: %s %s: gave up after %d attempts: %w", req.Method, req.URL.Path, attempt+1, err)
				}
				return nil, err
			}
			if resp.Body == nil {
				resp.Body = http.NoBody
			}
			resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
			return resp, nil
		}

		status := 0
		if resp != nil {
			status = resp.StatusCode
			drain(resp.Body)
		}
		cancel()
		t.log.Warn().Err(err).
			Str("method", req.Method).Str("path", req.URL.Path).Int("status", status).
			Str("reason", o.kind.String()).Int("attempt", attempt+1).
			Dur("wait", wait).Bool("shared_wait", o.kind == secondaryLimit).
			Msg("GitHub request will be retried")

		if o.kind == secondaryLimit {
			// A leader sleeps at the top of the loop and then probes; a
			// follower parks in gate.enter until the leader is done.
			if tk.lead {
				tk.wait = wait
			}
			continue
		}
		if err := t.sleep(ctx, wait); err != nil {
			return nil, fmt.Errorf("ghclient: %s %s: waiting %s before retrying: %w", req.Method, req.URL.Path, wait, err)
		}
	}
}

// attemptRequest clones req for one attempt, rewinding the body for re-sends
// and bounding the attempt by the per-attempt timeout. The returned cancel
// must run once the attempt's response is no longer read.
func (t *retryTransport) attemptRequest(ctx context.Context, req *http.Request, attempt int) (*http.Request, context.CancelFunc, error) {
	actx, cancel := ctx, context.CancelFunc(func() {})
	if t.timeout > 0 {
		actx, cancel = context.WithTimeout(ctx, t.timeout)
	}
	areq := req.Clone(actx)
	if attempt > 0 && req.Body != nil && req.Body != http.NoBody {
		body, err := req.GetBody()
		if err != nil {
			cancel()
			return nil, nil, fmt.Errorf("ghclient: %s %s: rewinding request body for retry: %w", req.Method, req.URL.Path, err)
		}
		areq.Body = body
	}
	return areq, cancel, nil
}

func isIdempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodPatch, http.MethodDelete:
		return true
	}
	return false
}

func classifyResponse(resp *http.Response) outcome {
	switch resp.StatusCode {
	case http.StatusForbidden, http.StatusTooManyRequests:
		body := bytes.ToLower(peekBody(resp))
		retryAfter, hasRetryAfter := parseRetryAfter(resp.Header)
		mentionsSecondary := bytes.Contains(body, []byte("secondary rate limit")) ||
			bytes.Contains(body, []byte("secondary-rate-limits")) ||
			bytes.Contains(body, []byte("abuse detection")) ||
			bytes.Contains(body, []byte("abuse-rate-limits"))
		switch {
		case mentionsSecondary && hasRetryAfter:
			return outcome{kind: secondaryLimit, wait: max(retryAfter, secondaryMinWait)}
		case mentionsSecondary:
			return outcome{kind: secondaryLimit, wait: secondaryDefaultWait}
		case resp.Header.Get("X-RateLimit-Remaining") == "0":
			// Checked before a bare Retry-After: a spent token must not
			// hold up the other installations through the shared gate.
			return outcome{kind: primaryLimit, wait: max(untilReset(resp.Header), retryAfter)}
		case hasRetryAfter:
			return outcome{kind: secondaryLimit, wait: max(retryAfter, secondaryMinWait)}
		case resp.StatusCode == http.StatusTooManyRequests:
			return outcome{kind: secondaryLimit, wait: secondaryDefaultWait}
		}
	case http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		retryAfter, _ := parseRetryAfter(resp.Header)
		return outcome{kind: transient, wait: retryAfter}
	}
	return outcome{kind: done}
}

func classifyError(err error) outcome {
	// ghinstallation could not mint the installation token, so the API
	// request itself was never sent; judge by the token response instead.
	var tokenErr *ghinstallation.HTTPError
	if errors.As(err, &tokenErr) {
		if tokenErr.Response == nil {
			return outcome{kind: transient, notSent: true}
		}
		o := classifyResponse(tokenErr.Response)
		if tokenErr.Response.Body != nil {
			tokenErr.Response.Body.Close() // ghinstallation leaves it open
		}
		o.notSent = true
		return o
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return outcome{kind: transient, notSent: true}
	}
	var certErr *tls.CertificateVerificationError
	if errors.As(err, &certErr) {
		return outcome{kind: done} // retrying will not fix a certificate
	}
	return outcome{kind: transient}
}

// parseRetryAfter reads Retry-After as delay-seconds or an HTTP date.
func parseRetryAfter(h http.Header) (time.Duration, bool) {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil && secs >= 0 {
		return time.Duration(secs) * time.Second, true
	}
	if at, err := http.ParseTime(v); err == nil {
		return max(time.Until(at), 0), true
	}
	return 0, false
}

// untilReset is the wait until X-RateLimit-Reset (Unix seconds), at least a
// second so that a reset already past by our clock does not spin.
func untilReset(h http.Header) time.Duration {
	reset, err := strconv.ParseInt(h.Get("X-RateLimit-Reset"), 10, 64)
	if err != nil {
		return primaryDefaultWait
	}
	return max(time.Until(time.Unix(reset, 0)), time.Second)
}

// secondaryWait doubles the server-stated wait for every consecutive strike,
// capped; it never waits less than the server asked for.
func secondaryWait(base time.Duration, strikes int) time.Duration {
	d := base
	for i := 1; i < strikes && d < secondaryMaxWait; i++ {
		d *= 2
	}
	return max(min(d, secondaryMaxWait), base)
}

// transientWait is exponential backoff with "equal jitter": the n-th retry
// waits a random time in [b/2, b] with b = 1s·2^n capped at 30s, so that
// clients failing together do not retry together, yet every retry waits at
// least b/2. A Retry-After from the server is a floor.
func transientWait(attempt int, floor time.Duration) time.Duration {
	b := transientBaseWait
	for i := 0; i < attempt && b < transientMaxWait; i++ {
		b *= 2
	}
	b = min(b, transientMaxWait)
	d := b/2 + time.Duration(rand.Int64N(int64(b/2)+1))
	return max(d, floor)
}

func endsAfterDeadline(ctx context.Context, wait time.Duration) bool {
	deadline, ok := ctx.Deadline()
	return ok && time.Now().Add(wait).After(deadline)
}

// sleepCtx is the default Config.Sleep.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// peekBody reads up to peekLimit bytes of the body and puts them back, so the
// caller (go-github) still sees the whole body.
func peekBody(resp *http.Response) []byte {
	if resp.Body == nil || resp.Body == http.NoBody {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, peekLimit))
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(b), resp.Body), resp.Body}
	return b
}

// drain reads a little of a discarded body before closing it so the
// connection can be reused.
func drain(body io.ReadCloser) {
	if body == nil {
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(body, peekLimit))
	body.Close()
}

// withoutVariedHeaders hides httpcache's X-Varied-* bookkeeping headers
// (X-Varied-Authorization holds the token) from callers, who may log response
// headers. It returns a copy: httpcache stores the original on EOF, and the
// cache needs those headers to match later requests.
func withoutVariedHeaders(resp *http.Response) *http.Response {
	var h http.Header
	for k := range resp.Header {
		if strings.HasPrefix(k, "X-Varied-") {
			if h == nil {
				h = resp.Header.Clone()
			}
			delete(h, k)
		}
	}
	if h == nil {
		return resp
	}
	out := *resp
	out.Header = h
	return &out
}

// cancelOnClose ends the attempt's context only when the caller is done with
// the body; ending it earlier would cut off the body being read.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}
