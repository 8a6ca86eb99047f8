package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/stagely-dev/stagely/agent"
	"github.com/stagely-dev/stagely/agent/bootstrap"
	"github.com/stagely-dev/stagely/agent/containers"
	"github.com/stagely-dev/stagely/agent/protocol"
	"github.com/stagely-dev/stagely/tunnel"
)

// controlChannel is the tunnel control channel that carries the agent
// protocol to the server.
const controlChannel = "agent"

// runManagedAgent is the agent on a preview machine: it trades its
// bootstrap token for an agent token over a control stream, holds its
// tunnel with that token, deploys what the server hands it and serves the
// preview streams from the compose services' network addresses.
func runManagedAgent(ctx context.Context, cfg agentExposeConfig, log zerolog.Logger) error {
	if err := missing(map[string]bool{"proxy": cfg.proxyAddr == "", "state-dir": cfg.stateDir == ""}); err != nil {
		return err
	}
	tc := &tls.Config{ServerName: cfg.serverName}
	if cfg.caFile != "" {
		pem, err := os.ReadFile(cfg.caFile)
		if err != nil {
			return fmt.Errorf("--ca: %w", err)
		}
		if tc.RootCAs, err = tunnel.CAPool(pem); err != nil {
			return fmt.Errorf("--ca %s: %w", cfg.caFile, err)
		}
	}
	if err := os.MkdirAll(cfg.stateDir, 0o700); err != nil {
		return fmt.Errorf("--state-dir: %w", err)
	}
	files := bootstrap.Files{BootstrapToken: cfg.bootstrapFile, AgentToken: filepath.Join(cfg.stateDir, "agent-token")}
	host, _ := os.Hostname()
	info := protocol.AgentInfo{Version: "stagely", Hostname: host}

	dial := func(token string, h tunnel.StreamHandler) (*tunnel.Agent, error) {
		tcfg := tunnel.DefaultConfig()
		tcfg.Logger = log
		return tunnel.NewAgent(tunnel.AgentConfig{Addr: cfg.proxyAddr, Token: token, TLS: tc, Handler: h, Tunnel: tcfg, Version: "stagely-agent"})
	}
	control := func(a *tunnel.Agent) protocol.DialFunc {
		return func(ctx context.Context) (io.ReadWriteCloser, error) { return a.OpenControl(ctx, controlChannel) }
	}

	// Exchange over a tunnel opened with the bootstrap token, unless a
	// token from an earlier run is on disk.
	token, err := bootstrap.TokenWithRetry(ctx, files, exchangerFunc(func(ctx context.Context, req protocol.ExchangeRequest) (protocol.ExchangeResponse, error) {
		boot, err := os.ReadFile(files.BootstrapToken)
		if err != nil {
			return protocol.ExchangeResponse{}, err
		}
		a, err := dial(strings.TrimSpace(string(boot)), tunnel.StreamHandlerFunc(func(_ context.Context, _ string, c net.Conn) { c.Close() }))
		if err != nil {
			return protocol.ExchangeResponse{}, err
		}
		actx, stop := context.WithCancel(ctx)
		defer stop()
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		refused := make(chan error, 1)
		go func() {
			if err := a.Run(actx); err != nil {
				refused <- err // for good: waiting longer mends nothing
				cancel()
			}
		}()
		if _, err := a.WaitConnected(wctx); err != nil {
			select {
			case err = <-refused:
			default:
			}
			return protocol.ExchangeResponse{}, fmt.Errorf("connect to the proxy with the bootstrap token: %w", err)
		}
		return (&protocol.Client{Dial: control(a)}).Exchange(ctx, req)
	}), info, tunnel.Backoff{}.Delay, func(err error, wait time.Duration) {
		log.Warn().Err(err).Dur("retry_in", wait).Msg("agent token exchange failed; retrying")
	})
	if err != nil {
		return fmt.Errorf("agent token: %w", err)
	}

	docker, err := containers.Connect(ctx)
	if err != nil {
		return err
	}
	engine, err := agent.New(ctx, agent.Config{WorkDir: filepath.Join(cfg.stateDir, "work"), Docker: docker})
	if err != nil {
		return err
	}
	routes := &previewRoutes{engine: engine, log: log}
	a, err := dial(token, routes)
	if err != nil {
		return err
	}
	// A tunnel the proxy refuses for good ends the agent, with the reason:
	// nothing it does works without one.
	rctx, refused := context.WithCancelCause(ctx)
	defer refused(nil)
	go func() {
		if err := a.Run(rctx); err != nil {
			refused(fmt.Errorf("tunnel to %s: %w", cfg.proxyAddr, err))
		}
	}()
	client := &protocol.Client{Dial: control(a), Token: token}
	onDeployment := func(d *protocol.Deployment) {
		routes.set(d)
		// The proxy grants hostnames at the handshake: a preview this
		// deployment adds is served once a new session takes it up, and
		// one it drops must leave the grants too, or the proxy could
		// publish its route again (after Valkey lost its keys) and it
		// would answer 502 instead of 404.
		if wel, ok := a.Welcome(); ok {
			if host, why := grantsDiffer(wel.Hostnames, d); why != "" {
				log.Info().Str("hostname", host).Int64("generation", d.Generation).Msgf("the deployment %s a preview; renewing the tunnel", why)
				a.Renew()
			}
		}
	}
	ag := &agent.Agent{Engine: engine, Client: client, OnDeployment: onDeployment,
		Logf: func(f string, args ...any) { log.Info().Msgf(f, args...) }}
	err = ag.Run(rctx)
	if cause := context.Cause(rctx); ctx.Err() == nil && cause != nil {
		return cause
	}
	if errors.Is(err, protocol.ErrUnauthorized) {
		return fmt.Errorf("the server no longer knows this agent (destroyed?): %w", err)
	}
	return err
}

type exchangerFunc func(ctx context.Context, req protocol.ExchangeRequest) (protocol.ExchangeResponse, error)

func (f exchangerFunc) Exchange(ctx context.Context, req protocol.ExchangeRequest) (protocol.ExchangeResponse, error) {
	return f(ctx, req)
}

// previewRoutes serves the proxy's preview streams: the hostname names a
// preview of the current deployment, whose compose service is dialled at
// its address on the compose network (no port is published on the host).
type previewRoutes struct {
	engine *agent.Engine
	log    zerolog.Logger
	mu     sync.Mutex
	cur    *protocol.Deployment
}

func (p *previewRoutes) set(d *protocol.Deployment) {
	p.mu.Lock()
	p.cur = d
	p.mu.Unlock()
}

func (p *previewRoutes) ServeStream(ctx context.Context, hostname string, conn net.Conn) {
	p.mu.Lock()
	d := p.cur
	p.mu.Unlock()
	// Each refusal is a 502 for the visitor; the line says why.
	if d == nil {
		p.log.Warn().Str("hostname", hostname).Msg("preview request before any deployment; answered 502")
		conn.Close()
		return
	}
	for _, pv := range d.Previews {
		if pv.Host != hostname {
			continue
		}
		log := p.log.With().Str("hostname", hostname).Str("service", pv.Service).Int("port", pv.Port).Logger()
		addr, err := p.engine.Address(ctx, d.EnvironmentID, pv.Service, pv.Port)
		if err != nil {
			log.Warn().Err(err).Msg("no address for the preview's service; answered 502")
			conn.Close()
			return
		}
		target, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", addr)
		if err != nil {
			log.Warn().Err(err).Str("address", addr).Msg("could not reach the preview's service; answered 502")
			conn.Close()
			return
		}
		tunnel.Pipe(conn, target)
		return
	}
	p.log.Warn().Str("hostname", hostname).Msg("no preview of the current deployment has this hostname; answered 502")
	conn.Close()
}

// grantsDiffer returns a hostname that grants and d's previews do not
// agree on, and why: "adds" for one of d's previews grants do not cover,
// "drops" for a grant none of them uses. A deployment with no previews (a
// destroy) needs nothing of the grants.
func grantsDiffer(grants []string, d *protocol.Deployment) (host, why string) {
	used := map[string]bool{}
	for _, pv := range d.Previews {
		if pv.Host == "" {
			continue
		}
		used[pv.Host] = true
		if !tunnel.HostAllowed(grants, pv.Host) {
			return pv.Host, "adds"
		}
	}
	if len(used) == 0 {
		return "", ""
	}
	for _, g := range grants {
		if !used[g] {
			return g, "drops"
		}
	}
	return "", ""
}
