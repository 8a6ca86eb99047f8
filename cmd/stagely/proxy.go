package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/stagely-dev/stagely/proxy"
	"github.com/stagely-dev/stagely/proxy/certs"
	"github.com/stagely-dev/stagely/tunnel"
)

type proxyConfig struct {
	httpAddr      string
	https         previewTLS
	tunnelAddr    string
	tunnelCert    string
	tunnelKey     string
	devCAFile     string
	devCANames    string
	routesFile    string
	previewDomain string
	valkeyURL     string
	valkeyPrefix  string
	hop           hopConfig
	gcPercent     int
	drain         time.Duration
	logLevel      string
	logFormat     string
}

func (c *proxyConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.httpAddr, "http-addr", ":8080", "public plain-HTTP listen address (local use with *.localhost, or port 80); empty: none")
	c.https.register(fs, "proxy nodes")
	fs.StringVar(&c.tunnelAddr, "tunnel-addr", ":4443", "listen address agents dial (TLS)")
	fs.StringVar(&c.tunnelCert, "tunnel-cert-file", "", "certificate (PEM) of the tunnel listener; empty: a development CA is made (see --dev-ca-file)")
	fs.StringVar(&c.tunnelKey, "tunnel-key-file", "", "private key (PEM) for --tunnel-cert-file")
	fs.StringVar(&c.devCAFile, "dev-ca-file", "", "without --tunnel-cert-file: where to write the development CA's certificate, for agents' --ca; its key is kept in FILE.key, so agents trust the proxy again after a restart")
	fs.StringVar(&c.devCANames, "dev-ca-names", "localhost,127.0.0.1", "comma-separated names and IPs the development certificate covers (what agents dial)")
	fs.StringVar(&c.routesFile, "routes", "", "static route file, lines of \"HOSTNAME TOKEN\" (standalone use, required)")
	fs.StringVar(&c.previewDomain, "preview-domain", "", "only single labels under this domain are routed, e.g. preview.example.com; empty: any routed host")
	fs.StringVar(&c.valkeyURL, "valkey-url", "", "Valkey/Redis URL of the shared route table, e.g. redis://host:6379/0; empty: single node")
	fs.StringVar(&c.valkeyPrefix, "valkey-prefix", routePrefix, "key prefix of the route table in Valkey")
	c.hop.register(fs, "proxy nodes")
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
	cfg := proxyConfig{https: previewTLS{tweakCerts: tweakCerts}}
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
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
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
	if c.previewDomain != "" {
		if err := checkPreviewDomain(c.previewDomain); err != nil {
			return err
		}
	}
	if err := checkValkeyURL(c.valkeyURL); err != nil {
		return err
	}
	if err := c.https.check(c.previewDomain, c.valkeyURL); err != nil {
		return err
	}
	if err := c.hop.check(c.valkeyURL); err != nil {
		return err
	}
	if c.httpAddr == "" && c.https.addr == "" {
		return errors.New("set --http-addr or --https-addr: the proxy would serve nobody")
	}
	return nil
}

// setting names a flag and its environment variable, for error messages.
func setting(name string) string { return fmt.Sprintf("--%s (%s)", name, envName(name)) }

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
	previewDomain := strings.ToLower(strings.TrimSuffix(cfg.previewDomain, "."))
	if err := routes.CheckDomain(previewDomain); err != nil {
		return fmt.Errorf("--routes and %s: %w", setting("preview-domain"), err)
	}
	tunnelTLS, err := proxyTunnelTLS(cfg, stdout)
	if err != nil {
		return err
	}
	pc := proxy.Config{
		PreviewDomain: previewDomain,
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
		_, secret := cfg.hop.node()
		if err := store.Agree(ctx, pc.PreviewDomain, secret); err != nil {
			return fmt.Errorf("%s and %s: %w", setting("preview-domain"), setting("hop-secret"), err)
		}
		pc.Routes = store
	}
	// The certificate manager answers ACME HTTP-01 challenges on the plain
	// HTTP listener (started after the manager); in on-demand mode it asks
	// the proxy (made before the manager) whether a host has a live route.
	var certsTLS *startedTLS
	pc.WrapPlainHTTP = func(h http.Handler) http.Handler { return certsTLS.wrapPlainHTTP(h) }
	pc.Node, pc.HopSecret = cfg.hop.node()
	p, err := proxy.New(pc)
	if err != nil {
		return err
	}
	defer p.Close()
	// Every hostname of the route file is known from the start: until its
	// agent (re)connects, it answers 502, not 404. In a shared table the
	// entries live as long as those the nodes publish.
	hostTTL := time.Duration(0)
	if cfg.valkeyURL != "" {
		hostTTL = proxy.DefaultHostTTL
	}
	if err := routes.Prime(ctx, p.Routes(), hostTTL); err != nil {
		return err
	}
	certsTLS, err = cfg.https.start(ctx, pc.PreviewDomain, p, cfg.valkeyURL, cfg.hop.addr != "", log)
	if err != nil {
		return err
	}
	defer certsTLS.close()
	httpsTLS := certsTLS.config
	mode := cfg.https.mode()

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
	if cfg.https.addr != "" {
		if err := serve("https", cfg.https.addr, func(ln net.Listener) error { return p.ServeTLS(runCtx, ln, httpsTLS) }); err != nil {
			return err
		}
	}
	if cfg.hop.addr != "" {
		if err := serve("hop", cfg.hop.addr, func(ln net.Listener) error { return p.ServeHop(runCtx, ln) }); err != nil {
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
	// Agents trust the CA file they were started with: a new CA at every
	// start would strand them all at the proxy's first restart. The CA is
	// kept, its key beside it, as the server keeps its own.
	ca, err := tunnelCA(cfg.devCAFile, cfg.devCAFile+".key")
	if err != nil {
		return nil, fmt.Errorf("--dev-ca-file: %w", err)
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

// routePrefix is the default key prefix of the route table in Valkey,
// the same for servers and proxy nodes.
const routePrefix = "stagely:route:"

// hopConfig is the internal hop between proxy nodes, on which a node
// forwards a request to the node that holds its agent's tunnel.
type hopConfig struct {
	addr      string
	advertise string
	secret    string
}

func (c *hopConfig) register(fs *flag.FlagSet, nodes string) {
	fs.StringVar(&c.addr, "hop-addr", "", "listen address of the internal hop between "+nodes+" (needs --valkey-url and --hop-secret); bind it to a private network")
	fs.StringVar(&c.advertise, "advertise-addr", "", "this node's internal hop address as the other nodes dial it; default --hop-addr")
	fs.StringVar(&c.secret, "hop-secret", "", "shared secret of the internal hop, the same on every node (at least 32 characters): it authenticates the nodes and keys the hop's TLS")
}

func (c *hopConfig) check(valkeyURL string) error {
	if c.addr == "" {
		return nil
	}
	if valkeyURL == "" {
		return errors.New("--hop-addr needs --valkey-url: nodes find each other's agents in the shared route table")
	}
	if len(c.secret) < 32 {
		return fmt.Errorf("--hop-secret (%s) must be at least 32 characters with --hop-addr", envName("hop-secret"))
	}
	// The other nodes dial the advertised address: ":9443" or
	// "0.0.0.0:9443" would name every node alike, and each would take
	// every agent for its own.
	adv, _ := c.node()
	host, _, err := net.SplitHostPort(adv)
	if ip := net.ParseIP(host); err != nil || host == "" || ip != nil && ip.IsUnspecified() {
		return fmt.Errorf("%s: %q is not an address the other nodes can dial; set it to this node's private address and port", setting("advertise-addr"), adv)
	}
	return nil
}

// node returns this node's name in the route table (its advertised hop
// address) and the hop secret; both empty without a hop.
func (c *hopConfig) node() (string, []byte) {
	if c.addr == "" {
		return "", nil
	}
	if c.advertise != "" {
		return c.advertise, []byte(c.secret)
	}
	return c.addr, []byte(c.secret)
}
