package main

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/palantir/go-githubapp/githubapp"
	"github.com/rs/zerolog"
	"github.com/uptrace/bun"
	"golang.org/x/sys/unix"

	"github.com/stagely-dev/stagely/agent/protocol"
	"github.com/stagely-dev/stagely/fleet"
	"github.com/stagely-dev/stagely/kv"
	"github.com/stagely-dev/stagely/provisioner"
	"github.com/stagely-dev/stagely/provisioner/digitalocean"
	"github.com/stagely-dev/stagely/provisioner/ec2"
	"github.com/stagely-dev/stagely/provisioner/hetzner"
	"github.com/stagely-dev/stagely/provisioner/local"
	"github.com/stagely-dev/stagely/proxy"
	"github.com/stagely-dev/stagely/repoconfig"
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
	publicURL     string
	agentBinary   string
	machineSize   string
	machineRegion string
	machineImage  string
	cloudEndpoint string
	namespace     string
	https         previewTLS
	// valkeyPrefix and hop matter with several servers: a shared route
	// table, and the hop on which a server's proxy forwards a request to
	// the server that holds the agent's tunnel.
	valkeyPrefix string
	hop          hopConfig
}

func (c *fleetConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.provider, "provider", "", "where previews run: local (agents as processes on this machine), aws, digitalocean or hetzner (credentials from AWS's default chain, DIGITALOCEAN_TOKEN, HCLOUD_TOKEN); empty: no deploys")
	fs.StringVar(&c.dataDir, "data-dir", "stagely-data", "local state: the tunnel's CA and local machines")
	fs.StringVar(&c.previewDomain, "preview-domain", "preview.localhost", "previews are served at <hash>.<preview-domain>")
	fs.StringVar(&c.proxyAddr, "proxy-addr", "127.0.0.1:8081", "public plain-HTTP address of the in-process preview proxy")
	fs.StringVar(&c.previewPort, "preview-port", "", "port shown in preview URLs; default the port of --https-addr, else of --proxy-addr (empty for 443 and 80)")
	fs.StringVar(&c.tunnelAddr, "tunnel-addr", "127.0.0.1:7443", "listen address of the tunnel agents dial")
	fs.StringVar(&c.tunnelPublic, "tunnel-public-addr", "", "the tunnel address as agents dial it (required for cloud providers); default --tunnel-addr")
	fs.StringVar(&c.agentCommand, "agent-command", "", "local provider: the agent command line; default this binary's `agent`")
	fs.StringVar(&c.publicURL, "public-url", "", "this server's base URL as machines reach it, to download the agent (required for cloud providers); default http://--addr")
	fs.StringVar(&c.agentBinary, "agent-binary", "", "the stagely binary machines download and run as their agent (for the machines' OS and CPU); default this binary")
	fs.StringVar(&c.machineSize, "machine-size", "", "cloud providers: machine type when .stagely.yml names none (t3.medium, s-2vcpu-4gb, cx22 by default)")
	fs.StringVar(&c.machineRegion, "machine-region", "", "cloud providers: region when .stagely.yml names none (AWS's configured region, fra1, fsn1 by default)")
	fs.StringVar(&c.machineImage, "machine-image", "", "cloud providers: image when .stagely.yml names none (Ubuntu 24.04 by default)")
	fs.StringVar(&c.cloudEndpoint, "cloud-endpoint", "", "cloud providers: the cloud API's base URL; default the cloud's own")
	fs.StringVar(&c.namespace, "namespace", "", "cloud providers: tells this Stagely's machines from another's in the same cloud account (tags, names): two installations sharing an account must each have their own, or each destroys the other's machines as orphans; lower-case letters, digits and dashes; default "+provisioner.DefaultNamespace)
	c.https.register(fs, "Stagely servers")
	fs.StringVar(&c.valkeyPrefix, "valkey-prefix", routePrefix, "with --valkey-url: key prefix of the previews' route table in Valkey")
	c.hop.register(fs, "Stagely servers")
}

// machineSetup is what the server checks before it touches anything else:
// the provider with its credentials, and the agent binary machines get.
type machineSetup struct {
	provider  provisioner.Provider
	agent     *agentBinary
	dataDir   string
	valkeyURL string // for certificates shared between servers
	// fileTLS is the previews' HTTPS from certificate files, read at
	// set-up; nil in the other TLS modes.
	fileTLS *startedTLS
}

// setUpMachines makes the --provider's machine provider and reads the
// agent binary; nil without a provider. It fails, naming what is missing,
// on settings or credentials a provider cannot work without.
func setUpMachines(ctx context.Context, fc fleetConfig, valkeyURL string) (*machineSetup, error) {
	if fc.provider == "" {
		if fc.https.addr != "" {
			return nil, fmt.Errorf("%s serves previews, and without %s there are none", setting("https-addr"), setting("provider"))
		}
		if fc.hop.addr != "" {
			return nil, fmt.Errorf("%s carries previews, and without %s there are none", setting("hop-addr"), setting("provider"))
		}
		return nil, nil
	}
	if providers := repoconfig.Providers(); !slices.Contains(providers, fc.provider) {
		return nil, fmt.Errorf("--provider %q: want one of %s", fc.provider, strings.Join(providers, ", "))
	}
	if err := checkPreviewDomain(fc.previewDomain); err != nil {
		return nil, err
	}
	if err := fc.https.check(fc.previewDomain, valkeyURL); err != nil {
		return nil, err
	}
	if err := fc.hop.check(valkeyURL); err != nil {
		return nil, err
	}
	var fileTLS *startedTLS
	if fc.https.mode() == tlsModeFile {
		// Read now, so that a wrong file fails the start before anything
		// else is touched; certificates from ACME need the proxy first.
		var err error
		if fileTLS, err = fc.https.start(ctx, fc.previewDomain, nil, valkeyURL, false, zerolog.Nop()); err != nil {
			return nil, err
		}
	}
	if fc.provider != "local" {
		if err := missing(map[string]bool{"public-url": fc.publicURL == "", "tunnel-public-addr": fc.tunnelPublic == ""}); err != nil {
			return nil, fmt.Errorf("--provider %s: machines in the cloud reach this server at its public addresses: %w", fc.provider, err)
		}
	}
	if err := os.MkdirAll(fc.dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("--data-dir: %w", err)
	}
	dataDir, err := filepath.Abs(fc.dataDir)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	binary := fc.agentBinary
	if binary == "" {
		binary = self
	}
	agentBin, err := newAgentBinary(binary)
	if err != nil {
		return nil, fmt.Errorf("--agent-binary: %w", err)
	}
	prov, err := newProvider(ctx, fc, dataDir, self)
	if err != nil {
		return nil, err
	}
	return &machineSetup{provider: prov, agent: agentBin, dataDir: dataDir, valkeyURL: valkeyURL, fileTLS: fileTLS}, nil
}

// fleetParts are what startFleet hands the server.
type fleetParts struct {
	// deployer provisions machines and deploys to them; nil without a
	// provider.
	deployer *fleet.Deployer
	// agent serves the agent binary machines download; nil without a
	// provider.
	agent http.Handler
	// stop drains the proxy: agents get GoAway and reconnect to whichever
	// process serves the tunnel address next, as after a crash.
	stop func()
}

// startFleet starts the preview proxy and its tunnel listener, and
// returns the Deployer that provisions machines through ms's provider;
// with no provider (ms nil) nothing.
func startFleet(ctx context.Context, fc fleetConfig, ms *machineSetup, webhookSecret string, db *bun.DB, shared kv.Store, clients githubapp.ClientCreator, log zerolog.Logger, errc chan<- error) (*fleetParts, error) {
	if ms == nil {
		return &fleetParts{stop: func() {}}, nil
	}
	dataDir, prov, agentBin, valkeyURL := ms.dataDir, ms.provider, ms.agent, ms.valkeyURL
	ca, err := tunnelCA(filepath.Join(dataDir, "tunnel-ca.pem"), filepath.Join(dataDir, "tunnel-ca-key.pem"))
	if err != nil {
		return nil, err
	}
	tunnelNames := []string{"localhost", "127.0.0.1"}
	if fc.tunnelPublic != "" {
		host, _, err := net.SplitHostPort(fc.tunnelPublic)
		if err != nil || host == "" {
			return nil, fmt.Errorf("--tunnel-public-addr %q is not host:port", fc.tunnelPublic)
		}
		tunnelNames = append(tunnelNames, host)
	}
	tunnelTLS, err := ca.ServerConfig(tunnelNames...)
	if err != nil {
		return nil, err
	}
	// One key, derived from the webhook secret, signs nothing GitHub sees:
	// it derives the machines' bootstrap tokens.
	secret, err := hkdf.Key(sha256.New, []byte(webhookSecret), nil, "stagely bootstrap tokens", 32)
	if err != nil {
		return nil, err
	}
	handler := &fleet.Handler{DB: db, Bus: shared, Tarballs: fleet.GitHubTarballs{Clients: clients}}
	control := &protocol.Server{Handler: handler, MaxWait: 25 * time.Second}
	primary := func(hash string) string { return hash + "." + fc.previewDomain }
	auth := &fleet.TunnelAuth{DB: db, PrimaryHost: primary}
	// With several servers the route table is shared, so that each
	// server's proxy finds the agents connected to the others; with the
	// hop it forwards their requests there.
	var routes proxy.RouteStore // nil: in memory
	closeRoutes := func() {}
	primeTTL := time.Duration(0) // in memory, until the destroy deletes them
	if valkeyURL != "" {
		vs, err := proxy.OpenValkey(ctx, valkeyURL, fc.valkeyPrefix)
		if err != nil {
			return nil, err
		}
		_, secret := fc.hop.node()
		if err := vs.Agree(ctx, fc.previewDomain, secret); err != nil {
			vs.Close()
			return nil, fmt.Errorf("%s and %s: %w", setting("preview-domain"), setting("hop-secret"), err)
		}
		routes, closeRoutes, primeTTL = vs, vs.Close, proxy.DefaultHostTTL
	}
	node, hopSecret := fc.hop.node()
	// The certificate manager, started once the proxy exists (on-demand
	// issuance asks it for live routes), answers ACME HTTP-01 challenges
	// on the plain HTTP listener, which starts after it.
	var certsTLS *startedTLS
	px, err := proxy.New(proxy.Config{
		WrapPlainHTTP: func(h http.Handler) http.Handler { return certsTLS.wrapPlainHTTP(h) },
		PreviewDomain: fc.previewDomain,
		Routes:        routes,
		Node:          node,
		HopSecret:     hopSecret,
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
		closeRoutes()
		return nil, err
	}
	closeProxy := func() {
		px.Close()
		closeRoutes()
	}
	if certsTLS = ms.fileTLS; certsTLS == nil {
		if certsTLS, err = fc.https.start(ctx, fc.previewDomain, px, valkeyURL, valkeyURL != "", log); err != nil {
			closeProxy()
			return nil, err
		}
	}
	if n, err := auth.PrimeRoutes(ctx, px.Routes(), primeTTL); err != nil {
		certsTLS.close()
		closeProxy()
		return nil, err
	} else if n > 0 {
		log.Info().Int("hosts", n).Msg("routes of running previews restored; each is live again when its agent reconnects")
	}
	var lns []net.Listener
	listen := func(setting, addr string) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			certsTLS.close()
			closeProxy()
			return nil, fmt.Errorf("--%s %s: %w", setting, addr, err)
		}
		lns = append(lns, ln)
		return ln, nil
	}
	// The listeners outlive ctx (cancelled at SIGTERM): stop drains them,
	// then ends them.
	runCtx, cancelRun := context.WithCancel(context.WithoutCancel(ctx))
	tln, err := listen("tunnel-addr", fc.tunnelAddr)
	if err != nil {
		cancelRun()
		return nil, err
	}
	pln, err := listen("proxy-addr", fc.proxyAddr)
	if err != nil {
		cancelRun()
		return nil, err
	}
	scheme, port := "http", fc.previewPort
	if port == "" {
		_, port, _ = net.SplitHostPort(pln.Addr().String())
	}
	if fc.https.addr != "" {
		sln, err := listen("https-addr", fc.https.addr)
		if err != nil {
			cancelRun()
			return nil, err
		}
		scheme = "https"
		if fc.previewPort == "" {
			_, port, _ = net.SplitHostPort(sln.Addr().String())
		}
		go func() { errc <- ignoreClosed(px.ServeTLS(runCtx, sln, certsTLS.config)) }()
		log.Info().Str("https", sln.Addr().String()).Str("tls_mode", fc.https.mode()).Msg("previews served over HTTPS")
	}
	if fc.hop.addr != "" {
		hln, err := listen("hop-addr", fc.hop.addr)
		if err != nil {
			cancelRun()
			return nil, err
		}
		go func() { errc <- ignoreClosed(px.ServeHop(runCtx, hln)) }()
		log.Info().Str("hop", hln.Addr().String()).Str("advertised", node).Msg("previews of agents connected to other servers are forwarded to them")
	}
	go func() { errc <- ignoreClosed(px.ServeTunnel(runCtx, tln)) }()
	stop := func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := px.Shutdown(sctx); err != nil {
			px.Close()
		}
		cancelRun()
		certsTLS.close()
		closeRoutes()
	}
	go func() { errc <- ignoreClosed(px.Serve(runCtx, pln)) }()
	tunnelPublic := fc.tunnelPublic
	if tunnelPublic == "" {
		tunnelPublic = tln.Addr().String()
	}
	log.Info().Str("proxy", pln.Addr().String()).Str("tunnel", tln.Addr().String()).Str("provider", fc.provider).Msg("preview proxy listening")

	return &fleetParts{deployer: &fleet.Deployer{
		DB: db, Bus: shared, Provider: prov, ProviderName: fc.provider, Secret: secret,
		Boot: provisioner.CloudInit{
			ServerURL: fc.publicURL, ProxyAddr: tunnelPublic,
			AgentURL: strings.TrimSuffix(fc.publicURL, "/") + agentBin.path(), AgentSHA256: agentBin.sum,
			TunnelCA: string(ca.PEM),
		},
		PreviewHost: func(hash, name string, first bool) string {
			if first {
				return primary(hash)
			}
			return hash + "-" + name + "." + fc.previewDomain
		},
		PreviewURL: func(host string) string {
			if port == "" || scheme == "http" && port == "80" || scheme == "https" && port == "443" {
				return scheme + "://" + host
			}
			return scheme + "://" + host + ":" + port
		},
		Routes:       px.Routes(),
		Launch:       launchWait(fc.provider),
		AgentTimeout: agentTimeout(fc.provider),
	}, agent: agentBin, stop: stop}, nil
}

// launchWait is how long a machine may take to run, and how often the
// provider is asked: a local process runs at once; a cloud VM takes a
// minute or two, and asking a cloud often eats its rate limit.
func launchWait(provider string) provisioner.Wait {
	if provider == "local" {
		return provisioner.Wait{Timeout: 2 * time.Minute, Interval: 200 * time.Millisecond}
	}
	return provisioner.Wait{} // the provisioner's defaults, made for clouds
}

// agentTimeout is how long a running machine's agent may take to call in:
// on a VM it first installs Docker and downloads itself.
func agentTimeout(provider string) time.Duration {
	if provider == "local" {
		return 2 * time.Minute
	}
	return 10 * time.Minute
}

// newProvider makes the --provider's machine provider. Cloud credentials
// come from each cloud's usual places; missing ones fail here, at start,
// with the provider's message naming them.
func newProvider(ctx context.Context, fc fleetConfig, dataDir, self string) (provisioner.Provider, error) {
	var (
		p   provisioner.Provider
		err error
	)
	switch fc.provider {
	case "local":
		cmd := strings.Fields(fc.agentCommand)
		if len(cmd) == 0 {
			cmd = []string{self, "agent"}
		}
		p, err = local.New(local.Config{Dir: filepath.Join(dataDir, "machines"), Command: cmd, Env: []string{"STAGELY_LOG_FORMAT=json"}})
	case "aws":
		p, err = ec2.New(ctx, ec2.Config{Region: fc.machineRegion, InstanceType: fc.machineSize, Image: fc.machineImage, Endpoint: fc.cloudEndpoint, Namespace: fc.namespace})
	case "digitalocean":
		p, err = digitalocean.New(digitalocean.Config{Region: fc.machineRegion, Size: fc.machineSize, Image: fc.machineImage, Endpoint: fc.cloudEndpoint, Namespace: fc.namespace})
	case "hetzner":
		p, err = hetzner.New(hetzner.Config{Location: fc.machineRegion, ServerType: fc.machineSize, Image: fc.machineImage, Endpoint: fc.cloudEndpoint, Namespace: fc.namespace})
	}
	if err != nil {
		return nil, fmt.Errorf("--provider %s: %w", fc.provider, err)
	}
	return p, nil
}

// agentPath is where the server serves the agent binary: under its
// checksum (agentBinary.path), so that while servers of two builds run
// side by side (a rolling upgrade) a machine that asks a server of the
// other build gets a 404, which its download retries, and never a binary
// that fails its checksum, which ends its boot.
const agentPath = "/agent/"

// agentBinary serves the stagely binary that machines download and run as
// their agent; the cloud-init checks it against sum before running it. The
// file is held open from start, so that a binary replaced on disk (an
// upgrade that renames a new one into place) does not change what is
// served under the old checksum.
type agentBinary struct {
	f    *os.File
	size int64
	sum  string
	mod  time.Time
}

func newAgentBinary(path string) (*agentBinary, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, st.Size())); err != nil {
		f.Close()
		return nil, fmt.Errorf("checksum %s: %w", path, err)
	}
	return &agentBinary{f: f, size: st.Size(), sum: hex.EncodeToString(h.Sum(nil)), mod: st.ModTime()}, nil
}

// path is where b is served.
func (b *agentBinary) path() string { return agentPath + b.sum + "/stagely" }

func (b *agentBinary) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != b.path() {
		http.Error(w, "this server has agent binary "+b.sum+", not the one asked for", http.StatusNotFound)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	// The server's write timeout suits webhooks, not tens of megabytes to
	// a machine on a slow link.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(15 * time.Minute))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"`+b.sum+`"`)
	w.Header().Set("X-Checksum-Sha256", b.sum)
	http.ServeContent(w, r, "stagely", b.mod, io.NewSectionReader(b.f, 0, b.size))
}

func ignoreClosed(err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, http.ErrServerClosed) || errors.Is(err, tunnel.ErrServerClosed) {
		return nil
	}
	return err
}

// tunnelCALife is how long the server's tunnel CA is valid. Every machine
// trusts the CA it was started with, for as long as it lives, so the CA
// must outlive every machine: a new one strands them all.
const tunnelCALife = 10 * 365 * 24 * time.Hour

// tunnelCA loads the tunnel's CA from the data directory, or makes one when
// there is none or it is within a month of its end. It is kept because
// running agents trust the CA file they were started with: a server that
// made a new CA at every start would strand them after a restart.
func tunnelCA(certFile, keyFile string) (*tunnel.DevCA, error) {
	// Servers that share the data directory and start together must end
	// up with one CA: each hands its own to the machines it makes, and an
	// agent then refuses every other server. The lock makes the check and
	// the write one step.
	lock, err := os.OpenFile(certFile+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock the tunnel CA: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock the tunnel CA: %w", err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)

	cert, cerr := os.ReadFile(certFile)
	key, kerr := os.ReadFile(keyFile)
	if cerr == nil && kerr == nil {
		if ca, err := tunnel.LoadDevCA(cert, key); err == nil && time.Until(ca.Expires()) > 30*24*time.Hour {
			return ca, nil
		}
	}
	ca, err := tunnel.NewCA("Stagely tunnel CA", tunnelCALife)
	if err != nil {
		return nil, err
	}
	kp, err := ca.KeyPEM()
	if err != nil {
		return nil, err
	}
	// Each file is whole or absent, even if this process dies mid-write.
	if err := writeFileAtomic(keyFile, kp, 0o600); err != nil {
		return nil, fmt.Errorf("write the tunnel CA key: %w", err)
	}
	if err := writeFileAtomic(certFile, ca.PEM, 0o644); err != nil {
		return nil, fmt.Errorf("write the tunnel CA: %w", err)
	}
	return ca, nil
}

// writeFileAtomic writes data to name through a temporary file renamed
// into place.
func writeFileAtomic(name string, data []byte, perm os.FileMode) error {
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	if err := os.Rename(tmp, name); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
