// Package certs gives the edge proxy its TLS: a *tls.Config whose
// certificates certmagic obtains from an ACME CA (Let's Encrypt by default)
// and keeps renewed, in one of three modes:
//
//   - ModeWildcard (production): ONE certificate for *.<preview-domain>,
//     obtained through the ACME DNS-01 challenge by a libdns provider
//     (Cloudflare is shipped), so that a new preview never costs a
//     certificate: Let's Encrypt allows 50 per registered domain a week.
//   - ModeOnDemand: a certificate per preview host, obtained during the
//     first TLS handshake for it, but only for a host under the preview
//     domain that the caller says has a live route.
//   - ModeHTTP: no TLS at all, for local use, where previews are served at
//     http://<hash>.localhost. Browsers, curl and systemd-resolved resolve
//     every *.localhost name to the loopback without any DNS record
//     (RFC 6761 §6.3); Go's resolver and a plain "files dns" glibc do not,
//     so a Go client dials 127.0.0.1 and sends the Host header.
//
// Certificates, keys and the ACME account live in a certmagic.Storage.
// ValkeyStorage shares them between several proxies, with the blocking
// lock certmagic needs so that a certificate is ordered once, by one
// proxy, however many ask for it.
//
// The package is not the proxy: it opens no listener, routes nothing and
// knows no routes. The proxy serves HTTPS with Manager.TLSConfig, wraps its
// port-80 handler with Manager.HTTPHandler, and in on-demand mode answers
// Config.HasRoute.
package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/libdns/cloudflare"
	"github.com/libdns/libdns"
	"github.com/rs/zerolog"
	"go.uber.org/zap"
)

// Mode is how the proxy gets its certificates.
type Mode string

const (
	// ModeWildcard obtains one wildcard certificate for the preview domain
	// through DNS-01. The production mode.
	ModeWildcard Mode = "wildcard"
	// ModeOnDemand obtains a certificate per preview host at its first
	// handshake, for hosts with a live route only.
	ModeOnDemand Mode = "on-demand"
	// ModeHTTP serves plain HTTP: no certificates. For local use.
	ModeHTTP Mode = "http"
)

// DNSProvider is what the DNS-01 solver needs from a DNS host: adding and
// removing the TXT record _acme-challenge.<preview-domain>. Every libdns
// provider (github.com/libdns/*) is one.
type DNSProvider interface {
	libdns.RecordAppender
	libdns.RecordDeleter
}

// Config configures a Manager. The zero value of every field is its
// default; Verify says what is missing.
type Config struct {
	// Mode selects how certificates are obtained. Default ModeWildcard.
	Mode Mode

	// PreviewDomain is the domain previews live under: a preview is
	// https://<hash>.<PreviewDomain>, hash being one DNS label. Lowercase,
	// no trailing dot. Required in ModeWildcard and ModeOnDemand; default
	// "localhost" in ModeHTTP.
	PreviewDomain string

	// ACMEDirectory is the directory URL of the ACME CA. Default Let's
	// Encrypt's production directory (certmagic.LetsEncryptProductionCA);
	// certmagic.LetsEncryptStagingCA for trials; Pebble's in tests.
	ACMEDirectory string

	// Email is the contact of the ACME account, to which the CA sends
	// expiry and policy notices. Required in ModeWildcard (certmagic would
	// ask for one on stdin), optional in ModeOnDemand. Configuring a CA
	// means agreeing to its subscriber agreement: the account is created
	// with it accepted.
	Email string

	// ACMERoots, if set, are the only CA certificates trusted when talking
	// to the ACME server, instead of the system's: needed for a private CA
	// such as Pebble, whose listener certificate no system trusts. They do
	// not affect the certificates served.
	ACMERoots *x509.CertPool

	// DNSProvider names the shipped libdns provider that answers DNS-01:
	// "cloudflare". Ignored when DNS is set. ModeWildcard needs it or DNS;
	// in ModeOnDemand it is optional and, when set, DNS-01 replaces the
	// HTTP-01 and TLS-ALPN-01 challenges.
	DNSProvider string

	// DNSAPIToken is the DNS provider's credential. For Cloudflare: an API
	// token (not the global API key) with Zone.DNS:Edit on the zone holding
	// PreviewDomain.
	DNSAPIToken string

	// DNSZoneToken is Cloudflare's optional second token, with Zone:Read on
	// all zones, for when DNSAPIToken is scoped to a single zone.
	DNSZoneToken string

	// DNS, if set, is the libdns provider used for DNS-01, whatever
	// DNSProvider says: a provider not shipped here, or a test's.
	DNS DNSProvider

	// DNSResolvers are DNS servers (host:port) asked for the zone that
	// holds PreviewDomain and, before the CA is asked to validate, whether
	// the TXT record is visible yet. Default: the system's resolvers for
	// the zone, the zone's authoritative servers for the record.
	DNSResolvers []string

	// DNSPropagationTimeout is how long to wait for the TXT record to
	// become visible before asking the CA to validate it; -1 skips the
	// check. Default 2 minutes.
	DNSPropagationTimeout time.Duration

	// Storage holds certificates, keys, the ACME account and the locks
	// around issuance. Proxies sharing a domain must share it (see
	// ValkeyStorage), or each obtains its own certificate. Default:
	// certmagic's file storage in the user's data directory, for a single
	// node.
	Storage certmagic.Storage

	// HasRoute reports whether name, a host under PreviewDomain, has a
	// live route: a nil error allows a certificate for it. Required in
	// ModeOnDemand, where it gates every issuance; unused otherwise. It is
	// called during TLS handshakes: keep it fast.
	HasRoute func(ctx context.Context, name string) error

	// Logger receives certmagic's log lines. Default: none (the zero
	// zerolog.Logger).
	Logger zerolog.Logger
}

func (c *Config) setDefaults() {
	if c.Mode == "" {
		c.Mode = ModeWildcard
	}
	if c.Mode == ModeHTTP && c.PreviewDomain == "" {
		c.PreviewDomain = "localhost"
	}
	c.PreviewDomain = strings.ToLower(c.PreviewDomain)
	if c.ACMEDirectory == "" {
		c.ACMEDirectory = certmagic.LetsEncryptProductionCA
	}
}

// Verify reports the first thing wrong with c once defaults are applied.
func (c Config) Verify() error {
	c.setDefaults()
	switch c.Mode {
	case ModeWildcard, ModeOnDemand, ModeHTTP:
	default:
		return fmt.Errorf("certs: unknown mode %q (want %q, %q or %q)", c.Mode, ModeWildcard, ModeOnDemand, ModeHTTP)
	}
	if c.PreviewDomain == "" {
		return fmt.Errorf("certs: PreviewDomain is required in %s mode", c.Mode)
	}
	if !validDomain(c.PreviewDomain) {
		return fmt.Errorf("certs: PreviewDomain %q is not a domain name", c.PreviewDomain)
	}
	if c.Mode == ModeHTTP {
		return nil
	}
	if u, err := url.Parse(c.ACMEDirectory); err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("certs: ACMEDirectory %q is not an https URL", c.ACMEDirectory)
	}
	if c.DNS == nil {
		switch c.DNSProvider {
		case "":
			if c.Mode == ModeWildcard {
				return errors.New("certs: a wildcard certificate needs DNS-01: set DNSProvider (cloudflare) or DNS")
			}
		case "cloudflare":
			if c.DNSAPIToken == "" {
				return errors.New("certs: DNSAPIToken is required for the cloudflare DNS provider")
			}
		default:
			return fmt.Errorf("certs: unknown DNSProvider %q (shipped: cloudflare)", c.DNSProvider)
		}
	}
	if c.Mode == ModeWildcard && c.Email == "" {
		// certmagic obtains the wildcard at start "interactively": without
		// an email it asks for one on stdin, which, left open (a terminal,
		// a container with a TTY), waits for ever, past ctx and holding the
		// issuance lock every other proxy waits on.
		return errors.New("certs: Email is required in wildcard mode")
	}
	if c.Mode == ModeOnDemand && c.HasRoute == nil {
		return errors.New("certs: HasRoute is required in on-demand mode")
	}
	return nil
}

// dnsProvider returns the DNS-01 provider, or nil for none.
func (c *Config) dnsProvider() DNSProvider {
	if c.DNS != nil {
		return c.DNS
	}
	if c.DNSProvider == "cloudflare" {
		return &cloudflare.Provider{APIToken: c.DNSAPIToken, ZoneToken: c.DNSZoneToken}
	}
	return nil
}

// ErrNotPreviewHost refuses, in on-demand mode, a certificate for a name
// that is not <one label>.<PreviewDomain>.
var ErrNotPreviewHost = errors.New("certs: not a preview host")

// Manager holds one proxy's certificates: it serves them in TLS
// handshakes and renews them in the background until Close.
type Manager struct {
	mode     Mode
	domain   string
	hasRoute func(ctx context.Context, name string) error
	magic    *certmagic.Config     // nil in ModeHTTP
	cache    *certmagic.Cache      // nil in ModeHTTP
	issuer   *certmagic.ACMEIssuer // nil in ModeHTTP
}

// New returns the Manager for cfg. In ModeWildcard it first loads the
// wildcard certificate from storage or, if there is none (or it has
// expired), obtains it, and returns only once it can be served; ctx bounds
// that wait, not the Manager's life. A stored certificate due for renewal
// is served and renewed in the background. The other modes do no I/O.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	if err := cfg.Verify(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	m := &Manager{mode: cfg.Mode, domain: cfg.PreviewDomain, hasRoute: cfg.HasRoute}
	if cfg.Mode == ModeHTTP {
		return m, nil
	}

	logger := zap.New(zerologCore{log: cfg.Logger})
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return m.magic, nil },
		Logger:           logger,
	})
	magic := certmagic.Config{
		Storage: cfg.Storage,
		Logger:  logger,
	}
	if cfg.Mode == ModeOnDemand {
		magic.OnDemand = &certmagic.OnDemandConfig{DecisionFunc: m.allow}
	}
	m.magic = certmagic.New(m.cache, magic)

	template := certmagic.ACMEIssuer{
		CA:           cfg.ACMEDirectory,
		Email:        cfg.Email,
		Agreed:       true,
		TrustedRoots: cfg.ACMERoots,
		Logger:       logger,
	}
	if dns := cfg.dnsProvider(); dns != nil {
		// Setting a DNS-01 solver disables HTTP-01 and TLS-ALPN-01.
		template.DNS01Solver = &certmagic.DNS01Solver{DNSManager: certmagic.DNSManager{
			DNSProvider:        dns,
			Resolvers:          cfg.DNSResolvers,
			PropagationTimeout: cfg.DNSPropagationTimeout,
			Logger:             logger,
		}}
	}
	m.issuer = certmagic.NewACMEIssuer(m.magic, template)
	m.magic.Issuers = []certmagic.Issuer{m.issuer}

	if cfg.Mode == ModeWildcard {
		name := "*." + cfg.PreviewDomain
		// A stored certificate that is still valid is served as it is,
		// even when due for renewal: the cache's maintenance renews it in
		// the background, with retries. ManageSync would renew it now, once,
		// and a CA or DNS outage would keep every proxy from starting for
		// the last third of the certificate's life.
		if cert, err := m.magic.CacheManagedCertificate(ctx, name); err == nil {
			if !cert.Expired() {
				return m, nil
			}
			m.cache.Remove([]string{cert.Hash()}) // ManageSync renews it, or fails
		}
		if err := m.magic.ManageSync(ctx, []string{name}); err != nil {
			m.cache.Stop()
			return nil, fmt.Errorf("certs: obtain certificate for %s from %s: %w", name, cfg.ACMEDirectory, err)
		}
	}
	return m, nil
}

// TLSConfig returns the configuration the proxy's HTTPS listener serves
// with, or nil in ModeHTTP. Its NextProtos offer h2 and http/1.1, and
// acme-tls/1 for the TLS-ALPN-01 challenge (on-demand mode without DNS):
// a caller that edits NextProtos must keep that one.
func (m *Manager) TLSConfig() *tls.Config {
	if m.magic == nil {
		return nil
	}
	tc := m.magic.TLSConfig()
	tc.MinVersion = tls.VersionTLS12
	tc.NextProtos = slices.Concat([]string{"h2", "http/1.1"}, tc.NextProtos)
	return tc
}

// HTTPHandler wraps the proxy's plain-HTTP (port 80) handler so that it
// answers ACME HTTP-01 challenges, including those started by another
// proxy sharing the storage; other requests go to next. In ModeHTTP it
// returns next.
func (m *Manager) HTTPHandler(next http.Handler) http.Handler {
	if m.issuer == nil {
		return next
	}
	return m.issuer.HTTPChallengeHandler(next)
}

// Mode reports the mode the Manager runs in.
func (m *Manager) Mode() Mode { return m.mode }

// Close stops certificate maintenance (renewals). Certificates already in
// storage stay there.
func (m *Manager) Close() {
	if m.cache != nil {
		m.cache.Stop()
	}
}

// allow is the on-demand DecisionFunc: a certificate only for
// <label>.<domain> with a live route.
func (m *Manager) allow(ctx context.Context, name string) error {
	name = strings.ToLower(name)
	label, ok := strings.CutSuffix(name, "."+m.domain)
	if !ok || !validLabel(label) {
		return fmt.Errorf("certificate for %q refused: %w under %s", name, ErrNotPreviewHost, m.domain)
	}
	if err := m.hasRoute(ctx, name); err != nil {
		return fmt.Errorf("certificate for %q refused: %w", name, err)
	}
	return nil
}

// validLabel reports whether s is one DNS label: letters, digits and
// inner hyphens, at most 63 bytes.
func validLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

func validDomain(s string) bool {
	if len(s) > 253-64 { // room for a preview label
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if !validLabel(label) {
			return false
		}
	}
	return true
}
