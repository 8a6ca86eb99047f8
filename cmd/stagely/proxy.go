package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/peterbourgon/ff/v3/ffcli"
	"github.com/rs/zerolog"

	"github.com/stagely-dev/stagely/proxy"
	"github.com/stagely-dev/stagely/proxy/certs"
	"github.com/stagely-dev/stagely/tunnel"
)

type proxyConfig struct {
	httpAddr      string
	httpsAddr     string
	tlsMode       string
	tlsCertFile   string
	tlsKeyFile    string
	acmeDirectory string
	acmeEmail     string
	acmeCAFile    string
	dnsProvider   string
	dnsAPIToken   string
	certStorage   string
	tunnelAddr    string
	tunnelCert    string
	tunnelKey     string
	devCAFile     string
	devCANames    string
	routesFile    string
	previewDomain string
	valkeyURL     string
	valkeyPrefix  string
	hopAddr       string
	advertise     string
	hopSecret     string
	gcPercent     int
	drain         time.Duration
	logLevel      string
	logFormat     string

	// tweakCerts, if set, edits the certificate manager's configuration
	// before it starts: tests point DNS-01 at Pebble's challenge server.
	tweakCerts func(*certs.Config)
}

// TLS modes of --tls-mode: the two ACME modes of package certs, a
// certificate from files, or no HTTPS.
const (
	tlsModeWildcard = string(certs.ModeWildcard)
	tlsModeOnDemand = string(certs.ModeOnDemand)
	tlsModeFile     = "file"
	tlsModeNone     = "none"
)

// certStorageValkey is the --cert-storage value that shares certificates
// through --valkey-url.
const certStorageValkey = "valkey"

func (c *proxyConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.httpAddr, "http-addr", ":8080", "public plain-HTTP listen address (local use with *.localhost, or port 80); empty: none")
	fs.StringVar(&c.httpsAddr, "https-addr", "", "public HTTPS listen address; its certificate comes from --tls-mode")
	fs.StringVar(&c.tlsMode, "tls-mode", "", "where --https-addr gets certificates: wildcard (one *.<preview-domain> certificate from the ACME CA by DNS-01, through --dns-provider; production), "+
		"on-demand (a certificate per preview host at its first handshake, only for hosts with a live route), file (--tls-cert-file and --tls-key-file) or none (no HTTPS); "+
		"default file when --tls-cert-file is set, none otherwise")
	fs.StringVar(&c.tlsCertFile, "tls-cert-file", "", "with --tls-mode file: certificate (PEM, e.g. the *.preview-domain wildcard) for --https-addr")
	fs.StringVar(&c.tlsKeyFile, "tls-key-file", "", "with --tls-mode file: private key (PEM) for --tls-cert-file")
	fs.StringVar(&c.acmeDirectory, "acme-directory", "", "with --tls-mode wildcard or on-demand: the ACME CA's directory URL; empty: Let's Encrypt's production CA")
	fs.StringVar(&c.acmeEmail, "acme-email", "", "with --tls-mode wildcard or on-demand: contact address of the ACME account (expiry and policy notices); using a CA accepts its subscriber agreement")
	fs.StringVar(&c.acmeCAFile, "acme-ca-file", "", "with --tls-mode wildcard or on-demand: CA certificates (PEM) to trust for the ACME server's own TLS instead of the system's, for a private CA; the certificates served are not affected")
	fs.StringVar(&c.dnsProvider, "dns-provider", "", "DNS host that answers the ACME DNS-01 challenge: cloudflare; required with --tls-mode wildcard, optional with on-demand (then it replaces the HTTP-01 and TLS-ALPN-01 challenges)")
	fs.StringVar(&c.dnsAPIToken, "dns-api-token", "", "credential of --dns-provider; for cloudflare an API token with Zone.DNS:Edit on the zone of --preview-domain")
	fs.StringVar(&c.certStorage, "cert-storage", "", "with --tls-mode wildcard or on-demand: where certificates, keys and the ACME account are kept: a directory, or \"valkey\" to share them through --valkey-url with the other proxy nodes (so one certificate is ordered for all); empty: certmagic's directory under the user's data directory")
	fs.StringVar(&c.tunnelAddr, "tunnel-addr", ":4443", "listen address agents dial (TLS)")
	fs.StringVar(&c.tunnelCert, "tunnel-cert-file", "", "certificate (PEM) of the tunnel listener; empty: a development CA is made (see --dev-ca-file)")
	fs.StringVar(&c.tunnelKey, "tunnel-key-file", "", "private key (PEM) for --tunnel-cert-file")
	fs.StringVar(&c.devCAFile, "dev-ca-file", "", "without --tunnel-cert-file: where to write the development CA's certificate, for agents' --ca")
	fs.StringVar(&c.devCANames, "dev-ca-names", "localhost,127.0.0.1", "comma-separated names and IPs the development certificate covers (what agents dial)")
	fs.StringVar(&c.routesFile, "routes", "", "static route file, lines of \"HOSTNAME TOKEN\" (standalone use, required)")
	fs.StringVar(&c.previewDomain, "preview-domain", "", "only single labels under this domain are routed, e.g. preview.example.com; empty: any routed host")
	fs.StringVar(&c.valkeyURL, "valkey-url", "", "Valkey/Redis URL of the shared route table, e.g. redis://host:6379/0; empty: single node")
	fs.StringVar(&c.valkeyPrefix, "valkey-prefix", "stagely:route:", "key prefix of the route table in Valkey")
	fs.StringVar(&c.hopAddr, "hop-addr", "", "listen address of the internal hop between proxy nodes (needs --valkey-url and --hop-secret); bind it to a private network")
	fs.StringVar(&c.advertise, "advertise-addr", "", "this node's internal hop address as the other nodes dial it; default --hop-addr")
	fs.StringVar(&c.hopSecret, "hop-secret", "", "shared secret of the internal hop, the same on every node (at least 32 characters)")
	fs.IntVar(&c.gcPercent, "gc-percent", 400, "Go GC target percentage: higher trades memory for CPU on the request path (GOMEMLIMIT still caps memory)")
	fs.DurationVar(&c.drain, "drain-timeout", 30*time.Second, "on SIGTERM, how long in-flight requests may take before the proxy closes them")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "json", "json or console")
}

// proxyCommand is `stagely proxy`: the edge proxy as a standalone process
// with a static route file (hostname → agent token).
func proxyCommand(stdout, stderr io.Writer) *ffcli.Command {
	return proxyCommandWith(stdout, stderr, nil)
}

// proxyCommandWith is proxyCommand whose certificate manager configuration
// tweakCerts may edit (tests: DNS-01 through Pebble's challenge server).
func proxyCommandWith(stdout, stderr io.Writer, tweakCerts func(*certs.Config)) *ffcli.Command {
	cfg := proxyConfig{tweakCerts: tweakCerts}
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	cfg.register(fs)
	c := &ffcli.Command{
		Name:       "proxy",
		ShortUsage: "stagely proxy --routes FILE [flags]",
		ShortHelp:  "edge proxy: Host routing onto agent tunnels",
		LongHelp: "Runs the edge proxy: agents dial --tunnel-addr over TLS and present a token from the route file; " +
			"requests for a hostname go through the tunnel of the agent whose token lists it.",
		FlagSet: fs,
		Options: ffOptions(),
		Exec: func(ctx context.Context, _ []string) error {
			return runProxy(ctx, cfg, stdout, stderr)
		},
	}
	c.UsageFunc = usage
	return c
}

func (c *proxyConfig) check() error {
	if err := missing(map[string]bool{"routes": c.routesFile == "", "tunnel-addr": c.tunnelAddr == ""}); err != nil {
		return err
	}
	if (c.tunnelCert == "") != (c.tunnelKey == "") {
		return errors.New("--tunnel-cert-file and --tunnel-key-file go together")
	}
	if c.tunnelCert == "" && c.devCAFile == "" {
		return fmt.Errorf("missing required setting: --tunnel-cert-file (%s) or, for local use, --dev-ca-file (%s)", envName("tunnel-cert-file"), envName("dev-ca-file"))
	}
	if err := c.checkTLS(); err != nil {
		return err
	}
	if c.hopAddr != "" {
		if c.valkeyURL == "" {
			return errors.New("--hop-addr needs --valkey-url: nodes find each other's agents in the shared route table")
		}
		if len(c.hopSecret) < 32 {
			return fmt.Errorf("--hop-secret (%s) must be at least 32 characters with --hop-addr", envName("hop-secret"))
		}
	}
	if c.httpAddr == "" && c.httpsAddr == "" {
		return errors.New("set --http-addr or --https-addr: the proxy would serve nobody")
	}
	return nil
}

// setting names a flag and its environment variable, for error messages.
func setting(name string) string { return fmt.Sprintf("--%s (%s)", name, envName(name)) }

// resolvedTLSMode is --tls-mode, or its default: file when a certificate
// file is given, none otherwise.
func (c *proxyConfig) resolvedTLSMode() string {
	if c.tlsMode != "" {
		return c.tlsMode
	}
	if c.tlsCertFile != "" || c.tlsKeyFile != "" {
		return tlsModeFile
	}
	return tlsModeNone
}

// checkTLS checks the HTTPS settings against --tls-mode: what the mode
// needs is set, and nothing is set that only another mode uses.
func (c *proxyConfig) checkTLS() error {
	mode := c.resolvedTLSMode()
	acme := map[string]bool{
		"acme-directory": c.acmeDirectory != "",
		"acme-email":     c.acmeEmail != "",
		"acme-ca-file":   c.acmeCAFile != "",
		"dns-provider":   c.dnsProvider != "",
		"dns-api-token":  c.dnsAPIToken != "",
		"cert-storage":   c.certStorage != "",
	}
	files := map[string]bool{"tls-cert-file": c.tlsCertFile != "", "tls-key-file": c.tlsKeyFile != ""}
	// unused names the settings given that mode does not use.
	unused := func(given map[string]bool, usedBy string) error {
		var names []string
		for n, set := range given {
			if set {
				names = append(names, setting(n))
			}
		}
		if len(names) == 0 {
			return nil
		}
		sort.Strings(names)
		return fmt.Errorf("%s: only used with --tls-mode %s, not with --tls-mode %s", strings.Join(names, ", "), usedBy, mode)
	}
	switch mode {
	case tlsModeNone:
		if c.httpsAddr != "" {
			return fmt.Errorf("%s needs certificates: set %s to wildcard, on-demand or file", setting("https-addr"), setting("tls-mode"))
		}
		if err := unused(files, tlsModeFile); err != nil {
			return err
		}
		return unused(acme, "wildcard or on-demand")
	case tlsModeFile:
		if err := missing(map[string]bool{"https-addr": c.httpsAddr == "", "tls-cert-file": c.tlsCertFile == "", "tls-key-file": c.tlsKeyFile == ""}); err != nil {
			return fmt.Errorf("--tls-mode file: %w", err)
		}
		return unused(acme, "wildcard or on-demand")
	case tlsModeWildcard, tlsModeOnDemand:
		if err := missing(map[string]bool{
			"https-addr":     c.httpsAddr == "",
			"preview-domain": c.previewDomain == "",
			"dns-provider":   mode == tlsModeWildcard && c.dnsProvider == "",
		}); err != nil {
			return fmt.Errorf("--tls-mode %s: %w", mode, err)
		}
		if err := unused(files, tlsModeFile); err != nil {
			return err
		}
		switch c.dnsProvider {
		case "":
		case "cloudflare":
			if c.dnsAPIToken == "" {
				return fmt.Errorf("missing required setting: %s for --dns-provider cloudflare", setting("dns-api-token"))
			}
		default:
			return fmt.Errorf("%s: unknown DNS provider %q (shipped: cloudflare)", setting("dns-provider"), c.dnsProvider)
		}
		if c.dnsProvider == "" && c.dnsAPIToken != "" {
			return fmt.Errorf("%s is set but %s is not", setting("dns-api-token"), setting("dns-provider"))
		}
		if c.acmeDirectory != "" && !strings.HasPrefix(c.acmeDirectory, "https://") {
			return fmt.Errorf("%s: %q is not an https URL", setting("acme-directory"), c.acmeDirectory)
		}
		if c.certStorage == certStorageValkey && c.valkeyURL == "" {
			return fmt.Errorf("%s valkey needs %s", setting("cert-storage"), setting("valkey-url"))
		}
		return nil
	default:
		return fmt.Errorf("%s: unknown mode %q (want wildcard, on-demand, file or none)", setting("tls-mode"), c.tlsMode)
	}
}

func runProxy(ctx context.Context, cfg proxyConfig, stdout, stderr io.Writer) error {
	if err := cfg.check(); err != nil {
		return err
	}
	log, err := newLogger(stderr, cfg.logLevel, cfg.logFormat)
	if err != nil {
		return err
	}
	debug.SetGCPercent(cfg.gcPercent)
	f, err := os.Open(cfg.routesFile)
	if err != nil {
		return fmt.Errorf("--routes: %w", err)
	}
	routes, err := proxy.ParseStaticRoutes(cfg.routesFile, f)
	f.Close()
	if err != nil {
		return err
	}
	tunnelTLS, err := proxyTunnelTLS(cfg, stdout)
	if err != nil {
		return err
	}
	pc := proxy.Config{
		PreviewDomain: strings.ToLower(strings.TrimSuffix(cfg.previewDomain, ".")),
		TunnelTLS:     tunnelTLS,
		Authenticator: routes,
		Logger:        log,
	}
	pc.Tunnel = tunnel.DefaultConfig()
	pc.Tunnel.Logger = log
	if cfg.valkeyURL != "" {
		store, err := proxy.OpenValkey(ctx, cfg.valkeyURL, cfg.valkeyPrefix)
		if err != nil {
			return err
		}
		defer store.Close()
		pc.Routes = store
	}
	mode := cfg.resolvedTLSMode()
	acme := mode == tlsModeWildcard || mode == tlsModeOnDemand
	// The certificate manager answers ACME HTTP-01 challenges on the plain
	// HTTP listener (started after the manager); in on-demand mode it asks
	// the proxy (made before the manager) whether a host has a live route.
	var mgr *certs.Manager
	if acme {
		pc.WrapPlainHTTP = func(h http.Handler) http.Handler { return mgr.HTTPHandler(h) }
	}
	if cfg.hopAddr != "" {
		pc.Node = cfg.advertise
		if pc.Node == "" {
			pc.Node = cfg.hopAddr
		}
		pc.HopSecret = []byte(cfg.hopSecret)
	}
	p, err := proxy.New(pc)
	if err != nil {
		return err
	}
	defer p.Close()
	var httpsTLS *tls.Config
	switch mode {
	case tlsModeFile:
		cert, err := tls.LoadX509KeyPair(cfg.tlsCertFile, cfg.tlsKeyFile)
		if err != nil {
			return fmt.Errorf("--tls-cert-file/--tls-key-file: %w", err)
		}
		httpsTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	case tlsModeWildcard, tlsModeOnDemand:
		m, closeStorage, err := startCerts(ctx, cfg, pc.PreviewDomain, p, log)
		if err != nil {
			return err
		}
		defer closeStorage()
		defer m.Close()
		mgr = m
		httpsTLS = mgr.TLSConfig()
	}

	errs := make(chan error, 4)
	serve := func(what, addr string, run func(net.Listener) error) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s listener: %w", what, err)
		}
		log.Info().Str("listener", what).Str("addr", ln.Addr().String()).Msg("listening")
		go func() {
			if err := run(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, tunnel.ErrServerClosed) {
				errs <- fmt.Errorf("%s: %w", what, err)
			}
		}()
		return nil
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	if err := serve("tunnel", cfg.tunnelAddr, func(ln net.Listener) error { return p.ServeTunnel(runCtx, ln) }); err != nil {
		return err
	}
	if cfg.httpAddr != "" {
		if err := serve("http", cfg.httpAddr, func(ln net.Listener) error { return p.Serve(runCtx, ln) }); err != nil {
			return err
		}
	}
	if cfg.httpsAddr != "" {
		if err := serve("https", cfg.httpsAddr, func(ln net.Listener) error { return p.ServeTLS(runCtx, ln, httpsTLS) }); err != nil {
			return err
		}
	}
	if cfg.hopAddr != "" {
		if err := serve("hop", cfg.hopAddr, func(ln net.Listener) error { return p.ServeHop(runCtx, ln) }); err != nil {
			return err
		}
	}
	log.Info().Int("agents", routes.Len()).Str("tls_mode", mode).Msg("proxy ready")
	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
	}
	log.Info().Dur("drain_timeout", cfg.drain).Msg("shutting down: draining requests and sending agents goaway")
	sctx, scancel := context.WithTimeout(context.Background(), cfg.drain)
	defer scancel()
	if err := p.Shutdown(sctx); err != nil {
		log.Warn().Err(err).Msg("drain did not finish")
	}
	return nil
}

// proxyTunnelTLS loads the tunnel listener's certificate, or makes a
// development CA and writes its certificate for agents' --ca.
func proxyTunnelTLS(cfg proxyConfig, stdout io.Writer) (*tls.Config, error) {
	if cfg.tunnelCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.tunnelCert, cfg.tunnelKey)
		if err != nil {
			return nil, fmt.Errorf("--tunnel-cert-file/--tunnel-key-file: %w", err)
		}
		return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}, nil
	}
	ca, err := tunnel.NewDevCA()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, n := range strings.Split(cfg.devCANames, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	tc, err := ca.ServerConfig(names...)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(cfg.devCAFile, ca.PEM, 0o644); err != nil {
		return nil, fmt.Errorf("--dev-ca-file: %w", err)
	}
	fmt.Fprintf(stdout, "development CA for agents (--ca): %s\n", cfg.devCAFile)
	return tc, nil
}

// startCerts starts the certificate manager of --tls-mode wildcard or
// on-demand. In wildcard mode it returns once the certificate is loaded
// from storage or obtained (ctx bounds the wait). closeStorage releases a
// shared storage after the manager is closed.
func startCerts(ctx context.Context, cfg proxyConfig, domain string, p *proxy.Proxy, log zerolog.Logger) (m *certs.Manager, closeStorage func(), err error) {
	mode := cfg.resolvedTLSMode()
	cc := certs.Config{
		Mode:          certs.Mode(mode),
		PreviewDomain: domain,
		ACMEDirectory: cfg.acmeDirectory,
		Email:         cfg.acmeEmail,
		DNSProvider:   cfg.dnsProvider,
		DNSAPIToken:   cfg.dnsAPIToken,
		Logger:        log.With().Str("component", "certs").Logger(),
	}
	if mode == tlsModeOnDemand {
		cc.HasRoute = p.HasRoute
	}
	if cfg.acmeCAFile != "" {
		pem, err := os.ReadFile(cfg.acmeCAFile)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", setting("acme-ca-file"), err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("%s: no PEM certificate in %s", setting("acme-ca-file"), cfg.acmeCAFile)
		}
		cc.ACMERoots = pool
	}
	closeStorage = func() {}
	switch cfg.certStorage {
	case "":
		if cfg.hopAddr != "" {
			log.Warn().Msg("several proxy nodes with certificates in a local directory: each orders its own; set --cert-storage valkey to share them")
		}
	case certStorageValkey:
		vs, err := certs.OpenValkeyStorage(ctx, certs.StorageConfig{URL: cfg.valkeyURL})
		if err != nil {
			return nil, nil, fmt.Errorf("%s valkey: %w", setting("cert-storage"), err)
		}
		cc.Storage = vs
		closeStorage = vs.Close
	default:
		cc.Storage = &certmagic.FileStorage{Path: cfg.certStorage}
	}
	if cfg.tweakCerts != nil {
		cfg.tweakCerts(&cc)
	}
	if mode == tlsModeWildcard {
		log.Info().Str("domain", "*."+domain).Msg("loading or obtaining the wildcard certificate")
	}
	m, err = certs.New(ctx, cc)
	if err != nil {
		closeStorage()
		return nil, nil, fmt.Errorf("--tls-mode %s: %w", mode, err)
	}
	return m, closeStorage, nil
}
