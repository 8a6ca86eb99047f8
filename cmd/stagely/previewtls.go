package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"

	"github.com/caddyserver/certmagic"
	"github.com/rs/zerolog"

	"github.com/stagely-dev/stagely/proxy"
	"github.com/stagely-dev/stagely/proxy/certs"
)

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

// previewTLS is how the preview proxy serves HTTPS: its listen address and
// where its certificates come from. `stagely proxy` and `stagely server`
// (whose in-process proxy serves previews in single-node mode) take the
// same settings.
type previewTLS struct {
	addr          string
	tlsMode       string
	tlsCertFile   string
	tlsKeyFile    string
	acmeDirectory string
	acmeEmail     string
	acmeCAFile    string
	dnsProvider   string
	dnsAPIToken   string
	certStorage   string

	// tweakCerts, if set, edits the certificate manager's configuration
	// before it starts: tests point DNS-01 at Pebble's challenge server.
	tweakCerts func(*certs.Config)
}

// register adds the HTTPS settings to fs; sharers says who would share
// certificates kept in Valkey.
func (c *previewTLS) register(fs *flag.FlagSet, sharers string) {
	fs.StringVar(&c.addr, "https-addr", "", "public HTTPS listen address of previews; its certificate comes from --tls-mode")
	fs.StringVar(&c.tlsMode, "tls-mode", "", "where --https-addr gets certificates: wildcard (one *.<preview-domain> certificate from the ACME CA by DNS-01, through --dns-provider; production), "+
		"on-demand (a certificate per preview host at its first handshake, only for hosts with a live route), file (--tls-cert-file and --tls-key-file) or none (no HTTPS); "+
		"default file when --tls-cert-file is set, none otherwise")
	fs.StringVar(&c.tlsCertFile, "tls-cert-file", "", "with --tls-mode file: certificate (PEM, e.g. the *.preview-domain wildcard) for --https-addr")
	fs.StringVar(&c.tlsKeyFile, "tls-key-file", "", "with --tls-mode file: private key (PEM) for --tls-cert-file")
	fs.StringVar(&c.acmeDirectory, "acme-directory", "", "with --tls-mode wildcard or on-demand: the ACME CA's directory URL; empty: Let's Encrypt's production CA")
	fs.StringVar(&c.acmeEmail, "acme-email", "", "with --tls-mode wildcard (required) or on-demand: contact address of the ACME account (expiry and policy notices); using a CA accepts its subscriber agreement")
	fs.StringVar(&c.acmeCAFile, "acme-ca-file", "", "with --tls-mode wildcard or on-demand: CA certificates (PEM) to trust for the ACME server's own TLS instead of the system's, for a private CA; the certificates served are not affected")
	fs.StringVar(&c.dnsProvider, "dns-provider", "", "DNS host that answers the ACME DNS-01 challenge: cloudflare; required with --tls-mode wildcard, optional with on-demand (then it replaces the HTTP-01 and TLS-ALPN-01 challenges)")
	fs.StringVar(&c.dnsAPIToken, "dns-api-token", "", "credential of --dns-provider; for cloudflare an API token with Zone.DNS:Edit on the zone of --preview-domain")
	fs.StringVar(&c.certStorage, "cert-storage", "", "with --tls-mode wildcard or on-demand: where certificates, keys and the ACME account are kept: a directory, or \"valkey\" to share them through --valkey-url with the other "+sharers+" (so one certificate is ordered for all); empty: certmagic's directory under the user's data directory")
}

// mode is --tls-mode, or its default: file when a certificate file is
// given, none otherwise.
func (c *previewTLS) mode() string {
	if c.tlsMode != "" {
		return c.tlsMode
	}
	if c.tlsCertFile != "" || c.tlsKeyFile != "" {
		return tlsModeFile
	}
	return tlsModeNone
}

// check checks the HTTPS settings against --tls-mode: what the mode needs
// is set, and nothing is set that only another mode uses.
func (c *previewTLS) check(previewDomain, valkeyURL string) error {
	mode := c.mode()
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
		if c.addr != "" {
			return fmt.Errorf("%s needs certificates: set %s to wildcard, on-demand or file", setting("https-addr"), setting("tls-mode"))
		}
		if err := unused(files, tlsModeFile); err != nil {
			return err
		}
		return unused(acme, "wildcard or on-demand")
	case tlsModeFile:
		if err := missing(map[string]bool{"https-addr": c.addr == "", "tls-cert-file": c.tlsCertFile == "", "tls-key-file": c.tlsKeyFile == ""}); err != nil {
			return fmt.Errorf("--tls-mode file: %w", err)
		}
		return unused(acme, "wildcard or on-demand")
	case tlsModeWildcard, tlsModeOnDemand:
		if err := missing(map[string]bool{
			"https-addr":     c.addr == "",
			"preview-domain": previewDomain == "",
			"dns-provider":   mode == tlsModeWildcard && c.dnsProvider == "",
			"acme-email":     mode == tlsModeWildcard && c.acmeEmail == "",
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
		if c.certStorage == certStorageValkey && valkeyURL == "" {
			return fmt.Errorf("%s valkey needs %s", setting("cert-storage"), setting("valkey-url"))
		}
		return nil
	default:
		return fmt.Errorf("%s: unknown mode %q (want wildcard, on-demand, file or none)", setting("tls-mode"), c.tlsMode)
	}
}

// startedTLS is the proxy's HTTPS once its certificates are loaded.
type startedTLS struct {
	// config serves --https-addr; nil without HTTPS.
	config *tls.Config
	mgr    *certs.Manager
	stop   func()
}

// wrapPlainHTTP lets the certificate manager answer ACME HTTP-01
// challenges on the plain HTTP listener.
func (s *startedTLS) wrapPlainHTTP(h http.Handler) http.Handler {
	if s == nil || s.mgr == nil {
		return h
	}
	return s.mgr.HTTPHandler(h)
}

func (s *startedTLS) close() {
	if s != nil && s.stop != nil {
		s.stop()
	}
}

// start loads the certificate files, or starts the certificate manager
// for p (which answers the on-demand mode's question of whether a host has
// a live route). shared says whether other nodes serve the same previews.
func (c *previewTLS) start(ctx context.Context, domain string, p *proxy.Proxy, valkeyURL string, shared bool, log zerolog.Logger) (*startedTLS, error) {
	switch mode := c.mode(); mode {
	case tlsModeFile:
		cert, err := tls.LoadX509KeyPair(c.tlsCertFile, c.tlsKeyFile)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert-file/--tls-key-file: %w", err)
		}
		return &startedTLS{config: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}, nil
	case tlsModeWildcard, tlsModeOnDemand:
		return c.startCerts(ctx, mode, domain, p, valkeyURL, shared, log)
	}
	return &startedTLS{}, nil
}

func (c *previewTLS) startCerts(ctx context.Context, mode, domain string, p *proxy.Proxy, valkeyURL string, shared bool, log zerolog.Logger) (*startedTLS, error) {
	cc := certs.Config{
		Mode:          certs.Mode(mode),
		PreviewDomain: domain,
		ACMEDirectory: c.acmeDirectory,
		Email:         c.acmeEmail,
		DNSProvider:   c.dnsProvider,
		DNSAPIToken:   c.dnsAPIToken,
		Logger:        log.With().Str("component", "certs").Logger(),
	}
	if mode == tlsModeOnDemand {
		cc.HasRoute = p.HasRoute
	}
	if c.acmeCAFile != "" {
		pem, err := os.ReadFile(c.acmeCAFile)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", setting("acme-ca-file"), err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate in %s", setting("acme-ca-file"), c.acmeCAFile)
		}
		cc.ACMERoots = pool
	}
	closeStorage := func() {}
	switch c.certStorage {
	case "":
		if shared {
			log.Warn().Msg("several proxy nodes with certificates in a local directory: each orders its own; set --cert-storage valkey to share them")
		}
	case certStorageValkey:
		vs, err := certs.OpenValkeyStorage(ctx, certs.StorageConfig{URL: valkeyURL})
		if err != nil {
			return nil, fmt.Errorf("%s valkey: %w", setting("cert-storage"), err)
		}
		cc.Storage = vs
		closeStorage = vs.Close
	default:
		cc.Storage = &certmagic.FileStorage{Path: c.certStorage}
	}
	if c.tweakCerts != nil {
		c.tweakCerts(&cc)
	}
	if mode == tlsModeWildcard {
		log.Info().Str("domain", "*."+domain).Msg("loading or obtaining the wildcard certificate")
	}
	m, err := certs.New(ctx, cc)
	if err != nil {
		closeStorage()
		return nil, fmt.Errorf("--tls-mode %s: %w", mode, err)
	}
	return &startedTLS{config: m.TLSConfig(), mgr: m, stop: func() { m.Close(); closeStorage() }}, nil
}
