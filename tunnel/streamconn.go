package tunnel

import (
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
	closed  atomic.Bool
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
// own pending reads stop at once, and the stream slot is given back.
func (s *streamConn) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if s.release != nil {
		defer s.release()
	}
	_ = s.Conn.SetReadDeadline(time.Unix(1, 0))
	return s.Conn.Close()
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
