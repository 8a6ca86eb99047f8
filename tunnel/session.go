package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"
)

// Session is one agent's live tunnel, on the proxy side.
type Session struct {
	id    Identity
	gen   uint64
	mux   *yamux.Session
	conn  *corkConn
	slots chan struct{} // one token per open stream: the stream cap
	// refusals holds the one over-cap stream being refused (acceptLoop).
	refusals chan struct{}
	ctx      context.Context
	cancel   context.CancelFunc
	srv      *Server

	goingAway atomic.Bool
}

// Identity is who the agent authenticated as.
func (s *Session) Identity() Identity { return s.id }

// Generation orders this session among the agent's sessions: a later one
// has a larger number, on any proxy node.
func (s *Session) Generation() uint64 { return s.gen }

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.ctx.Done() }

// RemoteAddr is the agent's address as this proxy sees it.
func (s *Session) RemoteAddr() net.Addr { return s.mux.RemoteAddr() }

// NumStreams is the number of streams open on the session.
func (s *Session) NumStreams() int { return s.mux.NumStreams() }

// OpenPreview opens a preview stream for hostname: the caller writes a
// client's HTTP connection into it. It checks, on every call, that the
// session's identity was granted hostname; it waits for a free stream
// slot until ctx ends.
func (s *Session) OpenPreview(ctx context.Context, hostname string) (net.Conn, error) {
	if !s.id.Allows(hostname) {
		return nil, fmt.Errorf("open preview stream for %s on agent %s (environment %s): %w",
			hostname, s.id.Agent, s.id.Environment, ErrHostnameNotAllowed)
	}
	if s.goingAway.Load() {
		return nil, fmt.Errorf("open preview stream for %s on agent %s: %w", hostname, s.id.Agent, ErrGoingAway)
	}
	select {
	case s.slots <- struct{}{}:
	case <-s.ctx.Done():
		return nil, fmt.Errorf("open preview stream for %s on agent %s: %w", hostname, s.id.Agent, ErrSessionClosed)
	case <-ctx.Done():
		return nil, fmt.Errorf("open preview stream for %s on agent %s: waiting for a stream slot (%d open): %w",
			hostname, s.id.Agent, cap(s.slots), ctx.Err())
	}
	st, err := s.mux.OpenStream()
	if err != nil {
		<-s.slots
		if errors.Is(err, yamux.ErrSessionShutdown) {
			err = ErrSessionClosed
		} else if errors.Is(err, yamux.ErrRemoteGoAway) {
			err = ErrGoingAway
		}
		return nil, fmt.Errorf("open preview stream for %s on agent %s: %w", hostname, s.id.Agent, err)
	}
	return s.slotted(newStreamConn(st, StreamPreview, hostname, s.releaseSlot)), nil
}

// slotted makes c hold its slot until yamux lets go of its stream: the
// agent may keep a stream the proxy closed, and fill it, for the close
// timeout, and MemoryBudget counts every window yamux holds.
func (s *Session) slotted(c *streamConn) *streamConn {
	c.linger = s.srv.cfg.Tunnel.StreamCloseTimeout
	c.lingerDiscard = int(s.srv.cfg.Tunnel.MaxStreamWindow)
	return c
}

// logger names the session's agent; it is built when a line is logged,
// not kept per session (an idle session should cost little).
func (s *Session) logger() *zerolog.Logger {
	l := s.srv.log.With().Str("agent", s.id.Agent).Str("environment", s.id.Environment).Logger()
	return &l
}

func (s *Session) releaseSlot() { <-s.slots }

// GoAway tells the agent this proxy is shutting down (PROTOCOL.md section
// 7): a goaway stream, then yamux GoAway. Open streams go on; no new
// preview stream is opened on this session.
func (s *Session) GoAway(reason string) error {
	if s.goingAway.Swap(true) {
		return nil
	}
	st, err := s.mux.OpenStream()
	if err != nil {
		return fmt.Errorf("goaway to agent %s: %w", s.id.Agent, err)
	}
	c := newStreamConn(st, StreamGoAway, reason, nil)
	if _, err := c.Write(nil); err != nil {
		c.Close()
		return fmt.Errorf("goaway to agent %s: %w", s.id.Agent, err)
	}
	c.Close()
	if err := s.mux.GoAway(); err != nil {
		return fmt.Errorf("goaway to agent %s: %w", s.id.Agent, err)
	}
	return nil
}

// Close ends the session and every stream on it.
func (s *Session) Close() error {
	err := s.mux.Close()
	s.cancel()
	return err
}

// acceptLoop takes the streams the agent opens and owns the session's
// life: when it returns, the session is over and is unregistered. It never
// blocks on a stream: each is served in its own goroutine.
func (s *Session) acceptLoop() {
	defer s.srv.sessionEnded(s)
	for {
		st, err := s.mux.AcceptStream()
		if err != nil {
			return
		}
		select {
		case s.slots <- struct{}{}:
			go s.serveStream(st)
			continue
		default:
		}
		// Over the stream cap: refuse this stream, keep the session.
		// Accepting it granted the agent a whole window, which yamux
		// keeps until the agent's FIN or the close timeout, so one
		// stream at a time is refused: an agent that keeps a refused
		// stream open waits, and yamux's backlog refuses its further
		// opens, as it does for an agent that opens faster than a
		// busy accept loop takes them.
		select {
		case s.refusals <- struct{}{}:
		case <-s.mux.CloseChan():
			st.Close()
			return
		}
		s.slotted(acceptedConn(st, func() { <-s.refusals })).Close()
	}
}

func (s *Session) serveStream(st *yamux.Stream) {
	conn := s.slotted(acceptedConn(st, s.releaseSlot))
	_ = st.SetReadDeadline(time.Now().Add(s.srv.cfg.Tunnel.HandshakeTimeout))
	t, text, err := readStreamHeader(st)
	_ = st.SetReadDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return
	}
	if t != StreamControl || s.srv.cfg.Control == nil {
		s.logger().Debug().Stringer("type", t).Msg("closing a stream of a type this side does not accept")
		conn.Close()
		return
	}
	s.srv.cfg.Control.ServeControl(s.ctx, s.id, text, conn)
}
