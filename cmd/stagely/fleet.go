package main

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/palantir/go-githubapp/githubapp"
	"github.com/rs/zerolog"
	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/agent/protocol"
	"github.com/stagely-dev/stagely/fleet"
	"github.com/stagely-dev/stagely/kv"
	"github.com/stagely-dev/stagely/provisioner"
	"github.com/stagely-dev/stagely/provisioner/local"
	"github.com/stagely-dev/stagely/proxy"
	"github.com/stagely-dev/stagely/reconciler"
	"github.com/stagely-dev/stagely/tunnel"
)

// fleetConfig is how the server reaches machines: which provider makes
// them, and the in-process proxy their agents' tunnels end at.
type fleetConfig struct {
	provider      string
	dataDir       string
	previewDomain string
	proxyAddr     string
	previewPort   string
	tunnelAddr    string
	tunnelPublic  string
	agentCommand  string
}

func (c *fleetConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.provider, "provider", "", "where previews run: local (agents as processes on this machine); empty: no deploys")
	fs.StringVar(&c.dataDir, "data-dir", "stagely-data", "local state: the tunnel's development CA and local machines")
	fs.StringVar(&c.previewDomain, "preview-domain", "preview.localhost", "previews are served at <hash>.<preview-domain>")
	fs.StringVar(&c.proxyAddr, "proxy-addr", "127.0.0.1:8081", "public plain-HTTP address of the in-process preview proxy")
	fs.StringVar(&c.previewPort, "preview-port", "", "port shown in preview URLs; default the port of --proxy-addr (empty for 80)")
	fs.StringVar(&c.tunnelAddr, "tunnel-addr", "127.0.0.1:7443", "listen address of the tunnel agents dial")
	fs.StringVar(&c.tunnelPublic, "tunnel-public-addr", "", "the tunnel address as agents dial it; default --tunnel-addr")
	fs.StringVar(&c.agentCommand, "agent-command", "", "local provider: the agent command line; default this binary's `agent`")
}

// startFleet starts the preview proxy and its tunnel listener, and
// returns the Deployer that provisions machines through the provider.
//
// stop drains the proxy: agents get GoAway and reconnect to whichever
// process serves the tunnel address next, as after a crash.
func startFleet(ctx context.Context, fc fleetConfig, webhookSecret string, db *bun.DB, shared kv.Store, clients githubapp.ClientCreator, log zerolog.Logger, errc chan<- error) (d reconciler.Deployer, stop func(), err error) {
	stop = func() {}
	if fc.provider == "" {
		return nil, stop, nil
	}
	if fc.provider != "local" {
		return nil, stop, fmt.Errorf("--provider %q: this build's server wires only the local provider", fc.provider)
	}
	d, stop, err = startLocalFleet(ctx, fc, webhookSecret, db, shared, clients, log, errc)
	if err != nil {
		return nil, func() {}, err
	}
	return d, stop, nil
}

func startLocalFleet(ctx context.Context, fc fleetConfig, webhookSecret string, db *bun.DB, shared kv.Store, clients githubapp.ClientCreator, log zerolog.Logger, errc chan<- error) (reconciler.Deployer, func(), error) {
	if err := os.MkdirAll(fc.dataDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("--data-dir: %w", err)
	}
	dataDir, err := filepath.Abs(fc.dataDir)
	if err != nil {
		return nil, nil, err
	}
	caFile := filepath.Join(dataDir, "tunnel-ca.pem")
	ca, err := devCA(caFile, filepath.Join(dataDir, "tunnel-ca-key.pem"))
	if err != nil {
		return nil, nil, err
	}
	tunnelTLS, err := ca.ServerConfig("localhost", "127.0.0.1")
	if err != nil {
		return nil, nil, err
	}
	// One key, derived from the webhook secret, signs nothing GitHub sees:
	// it derives the machines' bootstrap tokens.
	secret, err := hkdf.Key(sha256.New, []byte(webhookSecret), nil, "stagely bootstrap tokens", 32)
	if err != nil {
		return nil, nil, err
	}
	handler := &fleet.Handler{DB: db, Bus: shared, Tarballs: fleet.GitHubTarballs{Clients: clients}}
	control := &protocol.Server{Handler: handler, MaxWait: 25 * time.Second}
	primary := func(hash string) string { return hash + "." + fc.previewDomain }
	auth := &fleet.TunnelAuth{DB: db, PrimaryHost: primary}
	px, err := proxy.New(proxy.Config{
		PreviewDomain: fc.previewDomain,
		TunnelTLS:     tunnelTLS,
		Authenticator: auth,
		Control: tunnel.ControlHandlerFunc(func(ctx context.Context, id tunnel.Identity, channel string, conn net.Conn) {
			if channel != controlChannel {
				conn.Close()
				return
			}
			if err := control.ServeStream(ctx, conn); err != nil && ctx.Err() == nil {
				log.Debug().Err(err).Str("agent", id.Agent).Msg("agent call")
			}
		}),
		Logger: log,
	})
	if err != nil {
		return nil, nil, err
	}
	if n, err := auth.PrimeRoutes(ctx, px.Routes()); err != nil {
		px.Close()
		return nil, nil, err
	} else if n > 0 {
		log.Info().Int("hosts", n).Msg("routes of running previews restored; each is live again when its agent reconnects")
	}
	tln, err := net.Listen("tcp", fc.tunnelAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("--tunnel-addr %s: %w", fc.tunnelAddr, err)
	}
	pln, err := net.Listen("tcp", fc.proxyAddr)
	if err != nil {
		tln.Close()
		return nil, nil, fmt.Errorf("--proxy-addr %s: %w", fc.proxyAddr, err)
	}
	go func() { errc <- ignoreClosed(px.ServeTunnel(ctx, tln)) }()
	stop := func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := px.Shutdown(sctx); err != nil {
			px.Close()
		}
	}
	go func() { errc <- ignoreClosed(px.Serve(ctx, pln)) }()
	port := fc.previewPort
	if port == "" {
		_, port, _ = net.SplitHostPort(pln.Addr().String())
	}
	tunnelPublic := fc.tunnelPublic
	if tunnelPublic == "" {
		tunnelPublic = tln.Addr().String()
	}
	log.Info().Str("proxy", pln.Addr().String()).Str("tunnel", tln.Addr().String()).Msg("preview proxy listening")

	cmd := strings.Fields(fc.agentCommand)
	if len(cmd) == 0 {
		self, err := os.Executable()
		if err != nil {
			return nil, nil, err
		}
		cmd = []string{self, "agent"}
	}
	prov, err := local.New(local.Config{Dir: filepath.Join(dataDir, "machines"), Command: cmd,
		Env: []string{"STAGELY_CA_FILE=" + caFile, "STAGELY_LOG_FORMAT=json"}})
	if err != nil {
		return nil, nil, err
	}
	return &fleet.Deployer{
		DB: db, Bus: shared, Provider: prov, ProviderName: "local", Secret: secret,
		Boot: provisioner.CloudInit{
			ServerURL: "http://" + tunnelPublic, ProxyAddr: tunnelPublic,
			AgentURL: "http://" + tunnelPublic + "/agent", AgentSHA256: strings.Repeat("0", 64),
		},
		PreviewHost: func(hash, name string, first bool) string {
			if first {
				return primary(hash)
			}
			return hash + "-" + name + "." + fc.previewDomain
		},
		PreviewURL: func(host string) string {
			if port == "" || port == "80" {
				return "http://" + host
			}
			return "http://" + host + ":" + port
		},
		Routes:       px.Routes(),
		Launch:       provisioner.Wait{Timeout: 2 * time.Minute, Interval: 200 * time.Millisecond},
		AgentTimeout: 2 * time.Minute,
	}, stop, nil
}

func ignoreClosed(err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// devCA loads the tunnel's CA from the data directory, or makes one (valid
// a week) when there is none or it is about to expire. It is kept because
// running agents trust the CA file they were started with: a server that
// made a new CA at every start would strand them after a restart.
func devCA(certFile, keyFile string) (*tunnel.DevCA, error) {
	cert, cerr := os.ReadFile(certFile)
	key, kerr := os.ReadFile(keyFile)
	if cerr == nil && kerr == nil {
		if ca, err := tunnel.LoadDevCA(cert, key); err == nil && time.Until(ca.Expires()) > 24*time.Hour {
			return ca, nil
		}
	}
	ca, err := tunnel.NewDevCA()
	if err != nil {
		return nil, err
	}
	kp, err := ca.KeyPEM()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(keyFile, kp, 0o600); err != nil {
		return nil, fmt.Errorf("write the tunnel CA key: %w", err)
	}
	if err := os.WriteFile(certFile, ca.PEM, 0o644); err != nil {
		return nil, fmt.Errorf("write the tunnel CA: %w", err)
	}
	return ca, nil
}
