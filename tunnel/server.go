package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"
)

// ServerConfig is what the proxy side of the tunnel needs.
type ServerConfig struct {
	// TLS carries the tunnel listener's certificate (required). TLS 1.3 is
	// enforced whatever MinVersion says.
	TLS *tls.Config
	// Authenticator checks each agent's token (required).
	Authenticator Authenticator
	// Control serves the control streams agents open; nil closes them.
	Control ControlHandler
	// OnSessionUp is called when a session becomes its agent's current
	// one, before any request can be routed to it; OnSessionDown when the
	// current session of an agent ends (not when a session that was
	// already replaced ends). Both run on the session's own goroutine and
	// should return quickly. Either may be nil.
	OnSessionUp, OnSessionDown func(*Session)
	// MaxHandshakes bounds handshakes in progress at once; further
	// connections wait in the listener's backlog. Default 256.
	MaxHandshakes int
	// Tunnel tunes the sessions; zero fields take DefaultConfig's values.
	Tunnel Config
	// AgentTimeout bounds one Authenticate call. Default 5 s.
	AgentTimeout time.Duration
}

// Server is the proxy side of the tunnel: it accepts agents' TLS
// connections, authenticates them and keeps their sessions.
type Server struct {
	cfg    ServerConfig
	tls    *tls.Config
	ymux   *yamux.Config // shared by every session: yamux only reads it
	reg    *registry
	log    zerolog.Logger
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	closed    bool
	wg        sync.WaitGroup // handshakes, sessions' accept loops and the heartbeat
	hsSlots   chan struct{}
}

// NewServer checks cfg and returns a Server that is not yet listening.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.TLS == nil {
		return nil, errors.New("tunnel server: TLS config is required")
	}
	if cfg.Authenticator == nil {
		return nil, errors.New("tunnel server: Authenticator is required")
	}
	if err := cfg.Tunnel.Verify(); err != nil {
		return nil, err
	}
	cfg.Tunnel = cfg.Tunnel.withDefaults()
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = 256
	}
	if cfg.AgentTimeout <= 0 {
		cfg.AgentTimeout = 5 * time.Second
	}
	t := cfg.TLS.Clone()
	if t.MinVersion < tls.VersionTLS13 {
		t.MinVersion = tls.VersionTLS13
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:       cfg,
		tls:       t,
		reg:       newRegistry(),
		log:       cfg.Tunnel.Logger.With().Str("component", "tunnel").Logger(),
		ctx:       ctx,
		cancel:    cancel,
		listeners: map[net.Listener]struct{}{},
		hsSlots:   make(chan struct{}, cfg.MaxHandshakes),
		ymux:      cfg.Tunnel.yamuxConfig(),
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		heartbeat(ctx, s.cfg.Tunnel, s.reg.snapshot, s.log)
	}()
	return s, nil
}

// Serve accepts agents on ln (a plain TCP listener: the server runs TLS
// itself, inside the handshake timeout) until ctx ends or Shutdown or
// Close is called. It returns ErrServerClosed after those.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.isClosed() || ctx.Err() != nil {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || temporaryAccept(err) {
				// Out of file descriptors or buffers: as net/http does,
				// wait and accept again instead of ending the listener.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn().Err(err).Dur("retry_in", backoff).Msg("tunnel accept failed; retrying")
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("tunnel accept: %w", err)
		}
		backoff = 0
		select {
		case s.hsSlots <- struct{}{}:
		case <-s.ctx.Done():
			conn.Close()
			return ErrServerClosed
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.hsSlots }()
			s.handshake(conn)
		}()
	}
}

// temporaryAccept reports an accept error that passes: no file
// descriptors or buffers free for now.
func temporaryAccept(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// handshake runs TLS, hello and answer within HandshakeTimeout, then starts
// the session. It returns as soon as the session runs, so the goroutine
// whose stack grew in the TLS handshake does not live on with it.
func (s *Server) handshake(raw net.Conn) {
	deadline := time.Now().Add(s.cfg.Tunnel.HandshakeTimeout)
	_ = raw.SetDeadline(deadline)
	ctx, cancel := context.WithDeadline(s.ctx, deadline)
	defer cancel()
	log := s.log.With().Stringer("remote", raw.RemoteAddr()).Logger()

	tc := tls.Server(raw, s.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		log.Debug().Err(err).Msg("agent TLS handshake failed")
		raw.Close()
		return
	}
	version, h, err := readHello(tc)
	if err != nil {
		log.Info().Err(err).Msg("agent hello not received; connection dropped")
		raw.Close()
		return
	}
	if version != Version {
		s.refuse(tc, &Refusal{Code: CodeVersion, Reason: fmt.Sprintf("this proxy speaks tunnel protocol version %d, the agent %d", Version, version)}, log)
		return
	}
	actx, acancel := context.WithTimeout(ctx, s.cfg.AgentTimeout)
	id, err := s.cfg.Authenticator.Authenticate(actx, h.Token)
	acancel()
	if err != nil {
		s.refuse(tc, refusalFor(err), log)
		return
	}
	if id.Agent == "" {
		s.refuse(tc, &Refusal{Code: CodeInternal, Reason: "the authenticator returned no agent identity", Retry: true}, log)
		return
	}
	wel := Welcome{Agent: id.Agent, Environment: id.Environment, Hostnames: id.Hostnames,
		KeepAliveMS: s.cfg.Tunnel.KeepAliveInterval.Milliseconds()}
	if err := writeAnswer(tc, statusAccepted, wel); err != nil {
		log.Info().Err(err).Str("agent", id.Agent).Msg("could not answer agent")
		raw.Close()
		return
	}
	_ = raw.SetDeadline(time.Time{})
	cork := newCorkConn(tc)
	mux, err := yamux.Server(cork, s.ymux)
	if err != nil {
		log.Error().Err(err).Msg("start yamux session")
		raw.Close()
		return
	}
	sctx, scancel := context.WithCancel(s.ctx)
	sess := &Session{
		id:       id,
		gen:      s.reg.nextGeneration(),
		mux:      mux,
		conn:     cork,
		slots:    make(chan struct{}, s.cfg.Tunnel.StreamCap()),
		refusals: make(chan struct{}, 1),
		ctx:      sctx,
		cancel:   scancel,
		srv:      s,
	}
	if s.isClosed() {
		sess.Close()
		return
	}
	replaced := s.reg.add(sess)
	if replaced == sess {
		// A newer session of this agent is already registered.
		sess.Close()
		return
	}
	if s.cfg.OnSessionUp != nil {
		s.cfg.OnSessionUp(sess)
	}
	if s.isClosed() {
		// Close ran between the check above and add: it may not have seen
		// this session.
		sess.Close()
	}
	if replaced != nil {
		replaced.logger().Info().Uint64("generation", replaced.gen).Uint64("new_generation", sess.gen).Msg("agent reconnected; closing its old session")
		replaced.Close()
	}
	sess.logger().Info().Uint64("generation", sess.gen).Stringer("remote", raw.RemoteAddr()).Msg("agent connected")
	// Close waits for it: its end runs OnSessionDown (the proxy withdraws
	// the route), which must not outlive the server.
	s.wg.Go(sess.acceptLoop)
}

func (s *Server) refuse(tc *tls.Conn, r *Refusal, log zerolog.Logger) {
	log.Info().Str("code", r.Code).Str("reason", r.Reason).Msg("agent refused")
	_ = writeAnswer(tc, statusRefused, r)
	// Close the TLS write side so the refusal is flushed before the FIN.
	_ = tc.CloseWrite()
	tc.Close()
}

// refusalFor turns an Authenticator's error into what the agent is told.
func refusalFor(err error) *Refusal {
	var r *Refusal
	switch {
	case errors.As(err, &r):
		return r
	case errors.Is(err, ErrBadToken):
		return &Refusal{Code: CodeBadToken, Reason: "the agent token is unknown or revoked"}
	default:
		return &Refusal{Code: CodeInternal, Reason: "the proxy could not check the token now", Retry: true}
	}
}

// sessionEnded unregisters s when its accept loop stops.
func (s *Server) sessionEnded(sess *Session) {
	sess.Close()
	if s.reg.remove(sess) {
		sess.logger().Info().Uint64("generation", sess.gen).Msg("agent disconnected")
		if s.cfg.OnSessionDown != nil {
			s.cfg.OnSessionDown(sess)
		}
	}
}

// Lookup returns agent's current session.
func (s *Server) Lookup(agent string) (*Session, bool) {
	sess := s.reg.lookup(agent)
	return sess, sess != nil
}

// Sessions returns the current sessions.
func (s *Server) Sessions() []*Session { return s.reg.snapshot() }

// NumSessions is the number of agents connected.
func (s *Server) NumSessions() int { return s.reg.len() }

// Shutdown stops accepting agents, sends GoAway on every session, waits
// until their streams are done or ctx ends, then closes them.
func (s *Server) Shutdown(ctx context.Context, reason string) error {
	s.stopListening()
	sessions := s.reg.snapshot()
	// Each goaway is sent on its own: its frames queue behind the data
	// already on their way, and one agent on a slow, full link would
	// otherwise hold back every agent after it, and Shutdown past ctx.
	var goaways sync.WaitGroup
	var unsent atomic.Int64
	unsent.Store(int64(len(sessions)))
	for _, sess := range sessions {
		goaways.Go(func() {
			defer unsent.Add(-1)
			if err := sess.GoAway(reason); err != nil {
				sess.logger().Debug().Err(err).Msg("goaway")
			}
		})
	}
	// Close below ends the sessions, and with them a goaway still waiting
	// on its link.
	defer goaways.Wait()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var err error
wait:
	for {
		busy := 0
		for _, sess := range sessions {
			// The goaway stream itself may still be closing.
			if sess.NumStreams() > 0 && !sess.mux.IsClosed() {
				busy++
			}
		}
		if busy == 0 && unsent.Load() == 0 {
			break
		}
		select {
		case <-ctx.Done():
			err = fmt.Errorf("tunnel shutdown: %d sessions still busy: %w", busy, ctx.Err())
			if busy == 0 {
				err = fmt.Errorf("tunnel shutdown: goaway not yet sent to every agent: %w", ctx.Err())
			}
			break wait
		case <-tick.C:
		}
	}
	s.Close()
	return err
}

// Close stops accepting agents and ends every session at once.
func (s *Server) Close() {
	s.stopListening()
	s.cancel()
	for _, sess := range s.reg.snapshot() {
		sess.Close()
	}
	s.wg.Wait()
}

func (s *Server) stopListening() {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
}
