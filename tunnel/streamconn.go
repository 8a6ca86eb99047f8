package tunnel

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// streamConn is a yamux stream as handed to a user: it sends the stream
// header with its first write (one frame instead of two) and gives its
// stream slot back when closed.
type streamConn struct {
	net.Conn
	sent    atomic.Bool // the header is on its way
	mu      sync.Mutex  // orders the first write against a concurrent read
	header  []byte
	release func()
	// linger is this side's yamux close timeout when the slot must be
	// held until yamux lets go of the stream (the proxy's memory budget);
	// zero gives it back at Close. lingerDiscard is how much of what the
	// peer sends after Close may be read and dropped meanwhile (a window).
	linger        time.Duration
	lingerDiscard int
	closed        atomic.Bool
}

func newStreamConn(c net.Conn, t StreamType, text string, release func()) *streamConn {
	h := make([]byte, 2+len(text))
	h[0], h[1] = byte(t), byte(len(text))
	copy(h[2:], text)
	return &streamConn{Conn: c, header: h, release: release}
}

// sendHeader sends the header, joined with p, unless it went already; it
// reports whether it wrote.
func (s *streamConn) sendHeader(p []byte) (int, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sent.Load() {
		return 0, false, nil
	}
	buf := make([]byte, 0, len(s.header)+len(p))
	buf = append(append(buf, s.header...), p...)
	n, err := s.Conn.Write(buf)
	// Only now may a Write skip the lock: marked before the header was
	// written, a concurrent Write (http.Transport writes a request while
	// its read loop's first Read sends the header) could reach the stream
	// first, and the peer would read the request as a header.
	s.sent.Store(true)
	n -= len(s.header)
	if n < 0 {
		n = 0
	}
	return n, true, err
}

func (s *streamConn) Write(p []byte) (int, error) {
	if !s.sent.Load() {
		if n, wrote, err := s.sendHeader(p); wrote {
			return n, err
		}
	}
	return s.Conn.Write(p)
}

// Read sends the header first if nothing was written yet, so a user that
// reads before it writes does not leave the peer waiting for it.
func (s *streamConn) Read(p []byte) (int, error) {
	if !s.sent.Load() {
		if _, _, err := s.sendHeader(nil); err != nil {
			return 0, err
		}
	}
	return s.Conn.Read(p)
}

// Close ends the stream: yamux sends FIN (the peer reads to its end), our
// own pending reads stop at once, and the stream slot is given back, at
// once or, with linger, once yamux has let go of the stream.
func (s *streamConn) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	_ = s.Conn.SetReadDeadline(time.Unix(1, 0))
	err := s.Conn.Close()
	switch {
	case s.release == nil:
	case s.linger > 0:
		go lingerThen(s.Conn, s.linger, s.lingerDiscard, s.release)
	default:
		s.release()
	}
	return err
}

// lingerMaxPause is the longest pause between two looks at a closed
// stream that lingers.
const lingerMaxPause = 100 * time.Millisecond

// lingerThen calls done once c, a stream closed on this side, is gone
// from yamux: the peer's end seen, or wait (the close timeout, after which
// yamux resets it) passed. Until then yamux buffers what the peer still
// sends, up to a window, and the slot that budgets for that window must
// not go to another stream. What is buffered is read and dropped, so that
// yamux's EOF shows when the peer has ended, but no more than discard
// bytes: reading returns credit to the peer, and a peer still sending
// (a download its visitor left) would otherwise go on until the timeout.
func lingerThen(c net.Conn, wait time.Duration, discard int, done func()) {
	defer done()
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	deadline := time.Now().Add(wait)
	pause := time.Millisecond
	for time.Now().Before(deadline) {
		// c's read deadline is past: a read returns at once, with what is
		// buffered, or EOF once the peer's end is in and nothing is left.
		n, err := c.Read((*bp)[:min(len(*bp), discard)])
		discard -= n
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			return
		}
		if n > 0 {
			continue
		}
		time.Sleep(min(pause, time.Until(deadline)))
		pause = min(2*pause, lingerMaxPause)
	}
}

// CloseWrite half-closes: yamux's Close sends FIN and keeps reading until
// the peer's FIN. The slot is given back only by Close.
func (s *streamConn) CloseWrite() error {
	if !s.sent.Load() {
		if _, _, err := s.sendHeader(nil); err != nil {
			return err
		}
	}
	return s.Conn.Close()
}

// acceptedConn wraps a stream the peer opened; its header was already read.
func acceptedConn(c net.Conn, release func()) *streamConn {
	s := &streamConn{Conn: c, release: release}
	s.sent.Store(true)
	return s
}
