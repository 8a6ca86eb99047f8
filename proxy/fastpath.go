package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"time"

	"github.com/stagely-dev/stagely/tunnel"
)

// fastTransport is the RoundTripper of the tunnel ReverseProxy. A request
// with no body and no protocol upgrade (page loads, assets, API reads:
// nearly all of a preview's traffic) is written, and its response read, by
// the request's own goroutine on a pooled tunnel stream. net/http.Transport
// runs a read and a write goroutine per connection and hands every request
// and response between them and the caller over channels; without those
// handoffs and their bookkeeping a small request through proxy and tunnel
// costs about an eighth less CPU (BenchmarkRequestsPerSecond). Every other
// request (a body, which must stream while the response may already
// arrive; an upgrade; CONNECT) goes to the stock Transport, which keeps its
// own pool.
//
// Streams are pooled per dial key (session generation and hostname, see
// target.dialKey) like the Transport's connections, at most maxIdle per
// key; an idle stream is checked before reuse, since nothing reads it while
// it waits (the agent closes it when the preview's keep-alive connection
// ends), and dropped after idleTimeout or when its session ends.
type fastTransport struct {
	slow        *http.Transport
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	maxIdle     int
	idleTimeout time.Duration
	// maxHeader bounds a response's header bytes.
	maxHeader int64
	// headerTimeout bounds the wait for response headers; 0: none.
	headerTimeout time.Duration

	mu   sync.Mutex
	idle map[string][]*fastConn // by dial key, most recently used last
}

// fastConn is one tunnel stream in the fast path's pool.
type fastConn struct {
	conn   net.Conn
	sess   *tunnel.Session // nil when the dial did not say
	key    string
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Time

	// limit is how many more bytes the reader may take (header size
	// bound); got counts the bytes read since the request was sent, sent
	// the bytes of the request written so far.
	limit int64
	got   int64
	sent  int64
}

const fastBufSize = 16 << 10

var errFastHeaderTooLarge = errors.New("proxy: preview response headers too large")

func newFastTransport(slow *http.Transport, dial func(ctx context.Context, network, addr string) (net.Conn, error),
	maxIdle int, idleTimeout time.Duration, maxHeader int64, headerTimeout time.Duration) *fastTransport {
	return &fastTransport{
		slow: slow, dial: dial, maxIdle: maxIdle, idleTimeout: idleTimeout,
		maxHeader: maxHeader, headerTimeout: headerTimeout,
		idle: map[string][]*fastConn{},
	}
}

// fastEligible reports whether req can take the fast path: no body, no
// upgrade, a plain http URL.
func fastEligible(req *http.Request) bool {
	return (req.Body == nil || req.Body == http.NoBody) &&
		req.Method != http.MethodConnect &&
		len(req.Header["Upgrade"]) == 0 &&
		req.URL.Scheme == "http"
}

// RoundTrip implements http.RoundTripper.
func (t *fastTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !fastEligible(req) {
		return t.slow.RoundTrip(req)
	}
	ctx := req.Context()
	for attempt := 0; ; attempt++ {
		fc, reused, err := t.get(ctx, req.URL.Host)
		if err != nil {
			return nil, err
		}
		resp, err := t.roundTrip(ctx, fc, req)
		if err == nil {
			return resp, nil
		}
		fc.conn.Close()
		// A reused stream may have been closed by the agent since the
		// idle check (the preview ended its keep-alive connection): try a
		// fresh one, as net/http.Transport does, when the request cannot
		// have been acted on (none of it was written) or may be repeated
		// (idempotent, and no answer came at all). A timeout is the
		// preview being slow, not the stream being stale: sending the
		// request again would run it again and wait as long again.
		var ne net.Error
		timedOut := errors.As(err, &ne) && ne.Timeout()
		retry := reused && ctx.Err() == nil && !timedOut && attempt < 3 &&
			(fc.sent == 0 || (fc.got == 0 && idempotent(req)))
		if !retry {
			return nil, err
		}
	}
}

func idempotent(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, a := req.Header["Idempotency-Key"]
	_, b := req.Header["X-Idempotency-Key"]
	return a || b
}

// roundTrip writes req on fc and reads the response head; the body is read
// by the caller, which gives fc back to the pool at its end.
func (t *fastTransport) roundTrip(ctx context.Context, fc *fastConn, req *http.Request) (resp *http.Response, err error) {
	// Abort a stream whose client went away: its read would wait on.
	stop := context.AfterFunc(ctx, func() { fc.conn.Close() })
	defer func() {
		if err != nil {
			stop()
		}
	}()
	if t.headerTimeout > 0 {
		_ = fc.conn.SetReadDeadline(time.Now().Add(t.headerTimeout))
	}
	fc.sent, fc.got = 0, 0
	if err := req.Write(fc.bw); err != nil {
		return nil, err
	}
	if err := fc.bw.Flush(); err != nil {
		return nil, err
	}
	trace := httptrace.ContextClientTrace(ctx)
	for informational := 0; ; informational++ {
		fc.limit = t.maxHeader
		resp, err = http.ReadResponse(fc.br, req)
		if err != nil {
			if errors.Is(err, errFastHeaderTooLarge) {
				err = fmt.Errorf("preview response headers exceed %d bytes", t.maxHeader)
			}
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return nil, err
		}
		code := resp.StatusCode
		if code < 100 || code >= 200 || code == http.StatusSwitchingProtocols {
			break
		}
		// 1xx informational (100 Continue, 103 Early Hints): the
		// ReverseProxy's trace passes it to the client.
		if informational >= 5 {
			return nil, errors.New("preview sent too many 1xx responses")
		}
		if trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(code, textproto.MIMEHeader(resp.Header)); err != nil {
				return nil, err
			}
		}
	}
	fc.limit = math.MaxInt64
	if t.headerTimeout > 0 {
		_ = fc.conn.SetReadDeadline(time.Time{})
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return nil, errors.New("preview switched protocols without an upgrade request")
	}
	resp.Body = &fastBody{rc: resp.Body, fc: fc, t: t, stop: stop, reuse: !resp.Close && !req.Close}
	return resp, nil
}

// Write is what fc.bw writes to: the stream, counted.
func (fc *fastConn) Write(p []byte) (int, error) {
	n, err := fc.conn.Write(p)
	fc.sent += int64(n)
	return n, err
}

// Read is what fc.br reads: the stream, within the header limit.
func (fc *fastConn) Read(p []byte) (int, error) {
	if fc.limit <= 0 {
		return 0, errFastHeaderTooLarge
	}
	if int64(len(p)) > fc.limit {
		p = p[:fc.limit]
	}
	n, err := fc.conn.Read(p)
	fc.limit -= int64(n)
	fc.got += int64(n)
	return n, err
}

// fastBody is a fast-path response body: at its end the stream goes back
// to the pool, if the response allows it; closed early, the stream is
// closed (the rest of the body is still on its way).
type fastBody struct {
	rc    io.ReadCloser
	fc    *fastConn
	t     *fastTransport
	stop  func() bool
	reuse bool
	done  bool
}

func (b *fastBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err != nil {
		b.finish(errors.Is(err, io.EOF))
	}
	return n, err
}

func (b *fastBody) Close() error {
	if !b.done {
		b.finish(b.rc == http.NoBody)
	}
	return nil
}

func (b *fastBody) finish(complete bool) {
	b.done = true
	// stop fails when the client's context ended meanwhile and the stream
	// was closed.
	if b.stop() && complete && b.reuse {
		b.t.put(b.fc)
		return
	}
	b.fc.conn.Close()
}

// get takes an idle stream for key, or dials one.
func (t *fastTransport) get(ctx context.Context, key string) (*fastConn, bool, error) {
	now := time.Now()
	for {
		t.mu.Lock()
		list := t.idle[key]
		if len(list) == 0 {
			t.mu.Unlock()
			break
		}
		fc := list[len(list)-1]
		list[len(list)-1] = nil
		t.idle[key] = list[:len(list)-1]
		if len(list) == 1 {
			delete(t.idle, key)
		}
		t.mu.Unlock()
		if now.Sub(fc.idleAt) < t.idleTimeout && fc.usable() {
			return fc, true, nil
		}
		fc.conn.Close()
	}
	c, err := t.dial(ctx, "tcp", key)
	if err != nil {
		return nil, false, err
	}
	fc := &fastConn{conn: c, key: key}
	if tg, ok := ctx.Value(targetKey{}).(*target); ok {
		fc.sess = tg.sess
	}
	fc.br = bufio.NewReaderSize(fc, fastBufSize)
	fc.bw = bufio.NewWriterSize(fc, fastBufSize)
	return fc, false, nil
}

// aLongTimeAgo is a read deadline that has passed: a read with it only
// reports what is already there.
var aLongTimeAgo = time.Unix(1, 0)

// usable reports whether an idle stream is still open with nothing unread:
// a read that cannot wait returns a timeout on a live stream, EOF on one
// the agent closed, and bytes on one with a stray answer.
func (fc *fastConn) usable() bool {
	if fc.br.Buffered() > 0 {
		return false
	}
	if fc.sess != nil {
		select {
		case <-fc.sess.Done():
			return false
		default:
		}
	}
	if fc.conn.SetReadDeadline(aLongTimeAgo) != nil {
		return false
	}
	var one [1]byte
	n, err := fc.conn.Read(one[:])
	if te, ok := err.(interface{ Timeout() bool }); n != 0 || !ok || !te.Timeout() {
		return false
	}
	return fc.conn.SetReadDeadline(time.Time{}) == nil
}

// put returns a stream whose exchange is complete to the pool.
func (t *fastTransport) put(fc *fastConn) {
	fc.idleAt = time.Now()
	t.mu.Lock()
	list := t.idle[fc.key]
	if len(list) < t.maxIdle {
		t.idle[fc.key] = append(list, fc)
		fc = nil
	}
	t.mu.Unlock()
	if fc != nil {
		fc.conn.Close()
	}
}

// sweep closes idle streams past the idle timeout or of ended sessions.
func (t *fastTransport) sweep() {
	now := time.Now()
	t.dropIdle(func(fc *fastConn) bool {
		if fc.sess != nil {
			select {
			case <-fc.sess.Done():
				return true
			default:
			}
		}
		return now.Sub(fc.idleAt) >= t.idleTimeout
	})
}

// closeIdleOf closes the idle streams of sess, the stock Transport's
// idle connections too (it cannot tell them apart by session): a request
// that waits for one of sess's stream slots needs them back, and other
// previews' pooled streams are better kept.
func (t *fastTransport) closeIdleOf(sess *tunnel.Session) {
	t.dropIdle(func(fc *fastConn) bool { return fc.sess == sess })
	t.slow.CloseIdleConnections()
}

// dropIdle closes the idle streams for which drop is true.
func (t *fastTransport) dropIdle(drop func(*fastConn) bool) {
	var gone []*fastConn
	t.mu.Lock()
	for key, list := range t.idle {
		kept := list[:0]
		for _, fc := range list {
			if drop(fc) {
				gone = append(gone, fc)
				continue
			}
			kept = append(kept, fc)
		}
		clear(list[len(kept):])
		if len(kept) == 0 {
			delete(t.idle, key)
		} else {
			t.idle[key] = kept
		}
	}
	t.mu.Unlock()
	for _, fc := range gone {
		fc.conn.Close()
	}
}

// CloseIdleConnections closes every idle stream, the stock Transport's
// too.
func (t *fastTransport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = map[string][]*fastConn{}
	t.mu.Unlock()
	for _, list := range idle {
		for _, fc := range list {
			fc.conn.Close()
		}
	}
	t.slow.CloseIdleConnections()
}
