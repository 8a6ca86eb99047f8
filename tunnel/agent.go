package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"
)

// AgentConfig is what the agent side of the tunnel needs.
type AgentConfig struct {
	// Addr is the proxy's tunnel address, host:port (required).
	Addr string
	// Token is the agent's bootstrap or long-lived token (required).
	Token string
	// TLS verifies the proxy: set RootCAs for a private CA. ServerName
	// defaults to Addr's host. Verification is never skipped by this
	// package; TLS 1.3 is enforced.
	TLS *tls.Config
	// Handler serves the preview streams the proxy opens (required);
	// Forward is the usual one.
	Handler StreamHandler
	// Backoff is the reconnect schedule; zero fields take its defaults.
	Backoff Backoff
	// Tunnel tunes the session; zero fields take DefaultConfig's values.
	Tunnel Config
	// Version is sent in the hello, for the proxy's logs.
	Version string
	// DrainTimeout bounds how long a session the proxy said GoAway on may
	// keep serving its open streams. Default 2 min.
	DrainTimeout time.Duration
	// Dial opens the TCP connection; default a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnConnect, if set, is called with each accepted session's Welcome.
	OnConnect func(Welcome)
}

// Agent keeps one tunnel session to the proxy, reconnecting after any
// failure. It opens no listening socket: every connection it makes is
// outbound.
type Agent struct {
	cfg AgentConfig
	tls *tls.Config
	log zerolog.Logger

	mu      sync.Mutex
	cur     *agentSession
	changed chan struct{} // closed and replaced whenever cur changes
	// renews counts Renew calls: a session dialled before the last one
	// may hold grants older than it asked for.
	renews uint64
}

type agentSession struct {
	mux     *yamux.Session
	conn    *corkConn
	welcome Welcome
	slots   chan struct{}
	goaway  chan struct{}
	once    sync.Once
	// renew is closed by Renew: the agent connects again at once.
	renew     chan struct{}
	renewOnce sync.Once
}

// NewAgent checks cfg and returns an Agent that is not yet connected.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	switch {
	case cfg.Addr == "":
		return nil, errors.New("tunnel agent: proxy address is required")
	case cfg.Token == "":
		return nil, errors.New("tunnel agent: token is required")
	case cfg.Handler == nil:
		return nil, errors.New("tunnel agent: stream handler is required")
	}
	if err := cfg.Tunnel.Verify(); err != nil {
		return nil, err
	}
	cfg.Tunnel = cfg.Tunnel.withDefaults()
	cfg.Backoff = cfg.Backoff.withDefaults()
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 2 * time.Minute
	}
	if cfg.Dial == nil {
		d := &net.Dialer{Timeout: cfg.Tunnel.HandshakeTimeout, KeepAlive: 30 * time.Second}
		cfg.Dial = d.DialContext
	}
	var t *tls.Config
	if cfg.TLS != nil {
		t = cfg.TLS.Clone()
	} else {
		t = &tls.Config{}
	}
	if t.MinVersion < tls.VersionTLS13 {
		t.MinVersion = tls.VersionTLS13
	}
	if t.InsecureSkipVerify {
		return nil, errors.New("tunnel agent: TLS.InsecureSkipVerify is not allowed: the agent sends its token to the proxy it reaches; set RootCAs to trust a private CA")
	}
	if t.ServerName == "" {
		host, _, err := net.SplitHostPort(cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("tunnel agent: proxy address %q: %w", cfg.Addr, err)
		}
		t.ServerName = host
	}
	return &Agent{
		cfg:     cfg,
		tls:     t,
		log:     cfg.Tunnel.Logger.With().Str("component", "tunnel-agent").Str("proxy", cfg.Addr).Logger(),
		changed: make(chan struct{}),
	}, nil
}

// Run connects and keeps the agent connected until ctx ends (then it
// returns nil) or the proxy refuses the token for good (then it returns
// the *Refusal, which wraps ErrRefused).
func (a *Agent) Run(ctx context.Context) error {
	var drains sync.WaitGroup
	defer drains.Wait()
	attempt := 0
	for ctx.Err() == nil {
		started := time.Now()
		renews := a.renewCount()
		sess, err := a.connect(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ref *Refusal
			if errors.As(err, &ref) && !ref.Retry {
				a.log.Error().Str("code", ref.Code).Str("reason", ref.Reason).Msg("proxy refused this agent")
				return err
			}
			delay := a.cfg.Backoff.Delay(attempt)
			attempt++
			a.log.Warn().Err(err).Dur("retry_in", delay).Msg("could not connect to the proxy")
			sleep(ctx, delay)
			continue
		}
		if !a.setCurrentUnlessRenewed(sess, renews) {
			// Renew was asked while this session was being made: its
			// grants may predate the request.
			sess.mux.Close()
			continue
		}
		a.log.Info().Str("agent", sess.welcome.Agent).Strs("hostnames", sess.welcome.Hostnames).Msg("connected to the proxy")
		// Streams and heartbeats first: OnConnect may be slow (it logs,
		// or writes to a terminal), and the proxy may open streams at once.
		go a.acceptLoop(ctx, sess)
		go a.keepAlive(sess)
		if a.cfg.OnConnect != nil {
			a.cfg.OnConnect(sess.welcome)
		}
		select {
		case <-ctx.Done():
			a.clearCurrent(sess)
			sess.mux.Close()
			return nil
		case <-sess.mux.CloseChan():
			a.clearCurrent(sess)
			if time.Since(started) >= a.cfg.Backoff.Stable {
				attempt = 0
			}
			delay := a.cfg.Backoff.Delay(attempt)
			attempt++
			a.log.Warn().Dur("retry_in", delay).Msg("tunnel session ended; reconnecting")
			sleep(ctx, delay)
		case <-sess.renew:
			a.log.Info().Msg("renewing the session: connecting again to take up new grants")
			drains.Add(1)
			go func() {
				defer drains.Done()
				a.drain(ctx, sess)
			}()
		case <-sess.goaway:
			// The proxy is going away: connect again (another node may
			// answer) while the old session finishes its streams.
			a.clearCurrent(sess)
			a.log.Info().Msg("proxy said goaway; reconnecting while the old session drains")
			drains.Add(1)
			go func() {
				defer drains.Done()
				a.drain(ctx, sess)
			}()
			// At once after a session that lasted, as after a proxy's
			// restart; a proxy that says goaway to every new session gets
			// the backoff, not a reconnect loop.
			if time.Since(started) >= a.cfg.Backoff.Stable {
				attempt = 0
				continue
			}
			delay := a.cfg.Backoff.Delay(attempt)
			attempt++
			sleep(ctx, delay)
		}
	}
	return nil
}

// drainPoll is how often a draining session is asked whether its streams
// are done: yamux tells no one when its last stream ends.
const drainPoll = 100 * time.Millisecond

// drain closes a session the proxy said goaway on once its streams are
// done, the proxy closes it, ctx ends or DrainTimeout passes.
func (a *Agent) drain(ctx context.Context, sess *agentSession) {
	defer sess.mux.Close()
	deadline := time.NewTimer(a.cfg.DrainTimeout)
	defer deadline.Stop()
	poll := time.NewTicker(drainPoll)
	defer poll.Stop()
	for sess.mux.NumStreams() > 0 {
		select {
		case <-sess.mux.CloseChan():
			return
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-poll.C:
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// connect dials, runs TLS, says hello and starts yamux, all within the
// handshake timeout.
func (a *Agent) connect(ctx context.Context) (*agentSession, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Tunnel.HandshakeTimeout)
	defer cancel()
	raw, err := a.cfg.Dial(ctx, "tcp", a.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial proxy %s: %w", a.cfg.Addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	// The hello and the answer wait on the connection, not on ctx: an
	// agent told to stop should not wait out the handshake timeout.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	// fail closes raw and says why: ctx's end, when that is what broke
	// the exchange.
	fail := func(err error) (*agentSession, error) {
		raw.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("handshake with proxy %s: %w", a.cfg.Addr, ctx.Err())
		}
		return nil, err
	}
	tc := tls.Client(raw, a.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS handshake with proxy %s: %w", a.cfg.Addr, err)
	}
	if err := writeHello(tc, Version, hello{Token: a.cfg.Token, AgentVersion: a.cfg.Version}); err != nil {
		return fail(err)
	}
	wel, err := readAnswer(tc)
	if err != nil {
		return fail(err)
	}
	if !stop() {
		return fail(ctx.Err()) // ctx ended as the answer came
	}
	_ = raw.SetDeadline(time.Time{})
	cork := newCorkConn(tc)
	mux, err := yamux.Client(cork, a.cfg.Tunnel.yamuxConfig())
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("start yamux session: %w", err)
	}
	return &agentSession{
		mux:     mux,
		conn:    cork,
		welcome: wel,
		slots:   make(chan struct{}, a.cfg.Tunnel.MaxStreams),
		goaway:  make(chan struct{}),
		renew:   make(chan struct{}),
	}, nil
}

// setCurrentUnlessRenewed makes s the current session, unless Renew was
// called since renews was read (before s was dialled). One lock holds
// both, so a Renew either finds s current or refuses it here.
func (a *Agent) setCurrentUnlessRenewed(s *agentSession, renews uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.renews != renews {
		return false
	}
	a.cur = s
	close(a.changed)
	a.changed = make(chan struct{})
	return true
}

func (a *Agent) renewCount() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.renews
}

func (a *Agent) clearCurrent(s *agentSession) {
	a.mu.Lock()
	if a.cur == s {
		a.cur = nil
		close(a.changed)
		a.changed = make(chan struct{})
	}
	a.mu.Unlock()
}

func (a *Agent) current() (*agentSession, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cur, a.changed
}

// Welcome returns what the proxy answered on the current session, and
// whether there is one.
func (a *Agent) Welcome() (Welcome, bool) {
	s, _ := a.current()
	if s == nil {
		return Welcome{}, false
	}
	return s.welcome, true
}

// Renew replaces the current session with a new one: the agent connects
// again at once and the old session finishes its streams, as after the
// proxy's GoAway. The proxy grants hostnames at the handshake, so this is
// how an agent takes up hostnames granted since it connected (a
// deployment that adds a preview). A session being made when Renew is
// called is made again too. Until the new session is accepted,
// OpenControl waits for it and Welcome reports none.
func (a *Agent) Renew() {
	a.mu.Lock()
	a.renews++
	s := a.cur
	if s != nil {
		a.cur = nil
		close(a.changed)
		a.changed = make(chan struct{})
	}
	a.mu.Unlock()
	if s != nil {
		s.renewOnce.Do(func() { close(s.renew) })
	}
}

// WaitConnected waits until the agent has a session and returns its
// Welcome.
func (a *Agent) WaitConnected(ctx context.Context) (Welcome, error) {
	for {
		s, changed := a.current()
		if s != nil && !s.mux.IsClosed() {
			return s.welcome, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return Welcome{}, fmt.Errorf("wait for tunnel to %s: %w", a.cfg.Addr, ErrNotConnected)
		}
	}
}

// OpenControl opens a control stream on channel to the proxy, waiting
// for a session until ctx ends. The proxy hands it to its ControlHandler.
func (a *Agent) OpenControl(ctx context.Context, channel string) (net.Conn, error) {
	for {
		s, changed := a.current()
		if s != nil {
			st, err := s.mux.OpenStream()
			if err == nil {
				return newStreamConn(st, StreamControl, channel, nil), nil
			}
			if !errors.Is(err, yamux.ErrRemoteGoAway) && !errors.Is(err, yamux.ErrSessionShutdown) {
				return nil, fmt.Errorf("open control stream %q: %w", channel, err)
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("open control stream %q: %w", channel, ErrNotConnected)
		}
	}
}

// acceptLoop takes the streams the proxy opens. It never blocks on one:
// yamux closes the whole session when an opened stream waits for
// acceptance past StreamOpenTimeout, and while it waits, the streams
// behind it wait too.
func (a *Agent) acceptLoop(ctx context.Context, s *agentSession) {
	for {
		st, err := s.mux.AcceptStream()
		if err != nil {
			return
		}
		go a.serveStream(ctx, s, st)
	}
}

func (a *Agent) serveStream(ctx context.Context, s *agentSession, st *yamux.Stream) {
	select {
	case s.slots <- struct{}{}:
	default:
		st.Close() // over this side's stream cap
		return
	}
	conn := acceptedConn(st, func() { <-s.slots })
	_ = st.SetReadDeadline(time.Now().Add(a.cfg.Tunnel.HandshakeTimeout))
	t, text, err := readStreamHeader(st)
	_ = st.SetReadDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return
	}
	switch t {
	case StreamPreview:
		if !HostAllowed(s.welcome.Hostnames, text) {
			a.log.Warn().Str("hostname", text).Msg("proxy asked for a hostname this agent was not granted; refused")
			conn.Close()
			return
		}
		a.cfg.Handler.ServeStream(ctx, text, conn)
	case StreamGoAway:
		s.once.Do(func() { close(s.goaway) })
		conn.Close()
	default:
		conn.Close()
	}
}

// keepAlive pings the proxy every KeepAliveInterval and ends the session
// when the proxy is found dead (alive), which starts a reconnect.
func (a *Agent) keepAlive(s *agentSession) {
	t := time.NewTicker(a.cfg.Tunnel.KeepAliveInterval)
	defer t.Stop()
	for {
		select {
		case <-s.mux.CloseChan():
			return
		case <-t.C:
			if !alive(s.mux, s.conn, a.cfg.Tunnel) {
				a.log.Warn().Msg("proxy did not answer the heartbeat; reconnecting")
				s.mux.Close()
				return
			}
		}
	}
}
