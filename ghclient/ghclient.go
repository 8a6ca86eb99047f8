// Package ghclient builds the GitHub API clients Stagely uses as a GitHub App.
//
// It wires palantir/go-githubapp's ClientCreator (installation tokens via
// ghinstallation, one client per installation reused across events) with:
//
//   - a configurable REST base URL, so github.com, GitHub Enterprise Server and
//     a local simulator are driven the same way (GraphQL and upload URLs are
//     derived from it);
//   - an HTTP cache (gregjones/httpcache) backed by a byte-bounded, in-process
//     LRU that every app and installation client of one creator shares, keyed
//     on the credentials, with every cached response revalidated by a
//     conditional request, which GitHub does not charge against the rate
//     limit (clients for caller-supplied OAuth tokens are built without it);
//   - a retry middleware that honours secondary and primary rate limits through
//     one gate shared by all clients of the creator, retries transient 5xx
//     responses of requests that are safe to repeat, and bounds every attempt
//     with a timeout.
//
// It is not a GitHub API wrapper: callers use go-github (v60) and githubv4
// directly. It is not a webhook handler either; Config.GithubappConfig only
// hands the webhook secret on to go-githubapp's dispatcher. Nothing here is
// persisted: cached responses can hold installation tokens, so the cache never
// leaves process memory and is never shared between processes.
package ghclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/bradleyfalzon/ghinstallation/v2"
	"github.com/google/go-github/v60/github"
	"github.com/gregjones/httpcache"
	"github.com/palantir/go-githubapp/githubapp"
	"github.com/rs/zerolog"
	"golang.org/x/oauth2"
)

// Defaults applied by New for zero-valued Config fields.
const (
	defaultBaseURL    = "https://api.github.com/"
	defaultUserAgent  = "stagely"
	defaultCacheBytes = 50 << 20 // 50 MiB
	defaultTimeout    = 30 * time.Second
	defaultMaxRetries = 4
)

// installationClientCapacity bounds how many installation clients (each with
// its own ghinstallation token) the creator keeps. go-githubapp's default of
// 64 would make an app with more busy installations mint a fresh token on most
// events.
const installationClientCapacity = 512

// Config configures the GitHub App clients.
type Config struct {
	// BaseURL is the REST API root: https://api.github.com/, a GitHub
	// Enterprise Server https://host/api/v3/, or a simulator's root URL. The
	// trailing slash is optional. Empty means https://api.github.com/.
	BaseURL       string
	AppID         int64
	PrivateKeyPEM []byte // PKCS#1 or PKCS#8 RSA key of the app
	WebhookSecret string // not used by New; passed on by GithubappConfig
	UserAgent     string // empty means "stagely"
	// CacheBytes bounds the in-memory HTTP cache shared by all clients of the
	// creator. 0 means 50 MiB; negative disables caching.
	CacheBytes int64
	// Timeout bounds each HTTP attempt (connect, headers and body), not the
	// whole call: rate-limit waits between attempts are not counted. 0 means
	// 30s; negative means no per-attempt timeout.
	Timeout time.Duration
	// MaxRetries bounds the re-sends of one request. 0 means 4;
	// negative disables retries.
	MaxRetries int
	// Sleep waits between attempts. nil means a real timer that returns
	// ctx.Err() when ctx ends first. Tests inject a recorder. During a
	// secondary rate limit only the request leading the block sleeps; the
	// others wait for it without calling Sleep.
	Sleep func(ctx context.Context, d time.Duration) error
	// Logger receives retry and rate-limit warnings. The zero value discards.
	Logger zerolog.Logger
}

// endpoints are the URLs derived from Config.BaseURL.
type endpoints struct {
	v3, v4, upload, web string
}

// GithubappConfig returns the go-githubapp configuration (URLs, app id, key
// and webhook secret) matching c, e.g. for githubapp.NewDefaultEventDispatcher.
// A BaseURL that New would reject is passed through unchanged.
func (c Config) GithubappConfig() githubapp.Config {
	var gc githubapp.Config
	if ep, err := deriveEndpoints(c.BaseURL); err == nil {
		gc.V3APIURL, gc.V4APIURL, gc.WebURL = ep.v3, ep.v4, ep.web
	} else {
		gc.V3APIURL = c.BaseURL
	}
	gc.App.IntegrationID = c.AppID
	gc.App.PrivateKey = string(c.PrivateKeyPEM)
	gc.App.WebhookSecret = c.WebhookSecret
	return gc
}

// New returns a ClientCreator for the app described by cfg. It fails, naming
// the setting, when the base URL, app id or private key is unusable, so a
// misconfiguration shows at startup rather than on the first webhook.
func New(cfg Config) (githubapp.ClientCreator, error) {
	cc, _, err := newCreator(cfg)
	return cc, err
}

// newCreator is New, also returning the shared rate-limit gate for tests.
func newCreator(cfg Config) (githubapp.ClientCreator, *gate, error) {
	ep, err := deriveEndpoints(cfg.BaseURL)
	if err != nil {
		return nil, nil, err
	}
	if cfg.AppID <= 0 {
		return nil, nil, fmt.Errorf("ghclient: Config.AppID must be the GitHub App's positive id, got %d", cfg.AppID)
	}
	if len(cfg.PrivateKeyPEM) == 0 {
		return nil, nil, errors.New("ghclient: Config.PrivateKeyPEM is empty")
	}
	// Parse with the same code ghinstallation uses for every request, so a
	// key accepted here is a key that works later.
	if _, err := ghinstallation.NewAppsTransport(http.DefaultTransport, cfg.AppID, cfg.PrivateKeyPEM); err != nil {
		return nil, nil, fmt.Errorf("ghclient: Config.PrivateKeyPEM is not a PEM-encoded RSA private key: %w", err)
	}
	cfg = cfg.withDefaults()

	g := newGate()
	rt := &retrier{
		gate:       g,
		maxRetries: cfg.MaxRetries,
		timeout:    cfg.Timeout,
		sleep:      cfg.Sleep,
		log:        cfg.Logger,
	}
	opts := []githubapp.ClientOption{
		githubapp.WithClientUserAgent(cfg.UserAgent),
		// go-githubapp keeps only the last WithClientMiddleware call, so all
		// middleware goes in this one. It sits outside ghinstallation and the
		// cache: each retry gets a current token (a limit wait can outlast
		// one) and goes through the cache again.
		githubapp.WithClientMiddleware(rt.wrap),
		githubapp.WithTransport(varyOnAuthorization{next: baseTransport()}),
		// Deliberately no WithClientTimeout: it sets http.Client.Timeout,
		// which would also cover the rate-limit waits inside the middleware
		// and cut them short. The retry transport times each attempt instead.
	}
	cached := opts
	if cfg.CacheBytes > 0 {
		// go-githubapp calls this func once per client it builds, so it must
		// hand out one shared cache: a new cache per call would multiply the
		// byte bound by the number of clients. alwaysValidate=true turns
		// GitHub's max-age=60 into max-age=0, so a cached entry is never
		// served without a conditional request; Stagely must not act on a
		// minute-old pull request head, and a 304 costs no rate limit.
		shared := newMemCache(cfg.CacheBytes)
		cached = append(slices.Clone(opts), githubapp.WithClientCaching(true, func() httpcache.Cache { return shared }))
	}

	upload, err := url.Parse(ep.upload)
	if err != nil {
		return nil, nil, fmt.Errorf("ghclient: derived upload URL %q: %w", ep.upload, err)
	}
	// The upload URL is set before the caching creator stores a client, so a
	// cached client is never written to while in use.
	cc, err := githubapp.NewCachingClientCreator(uploadURLCreator{
		ClientCreator: githubapp.NewClientCreator(ep.v3, ep.v4, cfg.AppID, cfg.PrivateKeyPEM, cached...),
		tokens:        githubapp.NewClientCreator(ep.v3, ep.v4, cfg.AppID, cfg.PrivateKeyPEM, opts...),
		upload:        upload,
	}, installationClientCapacity)
	if err != nil {
		return nil, nil, fmt.Errorf("ghclient: creating installation client cache: %w", err)
	}
	return cc, g, nil
}

func (c Config) withDefaults() Config {
	if c.UserAgent == "" {
		c.UserAgent = defaultUserAgent
	}
	if c.CacheBytes == 0 {
		c.CacheBytes = defaultCacheBytes
	}
	switch {
	case c.Timeout == 0:
		c.Timeout = defaultTimeout
	case c.Timeout < 0:
		c.Timeout = 0
	}
	switch {
	case c.MaxRetries == 0:
		c.MaxRetries = defaultMaxRetries
	case c.MaxRetries < 0:
		c.MaxRetries = 0
	}
	if c.Sleep == nil {
		c.Sleep = sleepCtx
	}
	return c
}

// BotLogin returns the login GitHub shows for the app's own actions, the app
// slug followed by "[bot]", e.g. to recognise and skip the app's own comments.
// It calls GET /app with the app (JWT) client.
func BotLogin(ctx context.Context, cc githubapp.ClientCreator) (string, error) {
	client, err := cc.NewAppClient()
	if err != nil {
		return "", fmt.Errorf("ghclient: creating app client: %w", err)
	}
	app, _, err := client.Apps.Get(ctx, "")
	if err != nil {
		return "", fmt.Errorf("ghclient: GET /app: %w", err)
	}
	if app.GetSlug() == "" {
		return "", errors.New("ghclient: GET /app returned no slug")
	}
	return app.GetSlug() + "[bot]", nil
}

// deriveEndpoints validates the REST base URL and derives the GraphQL, upload
// and web URLs the way GitHub lays them out: api.github.com has its own
// upload and web hosts; GitHub Enterprise Server serves /api/v3/,
// /api/graphql and /api/uploads/ on one host; any other URL (a simulator) is
// taken to serve GraphQL at <base>graphql and uploads at the base itself.
func deriveEndpoints(raw string) (endpoints, error) {
	if strings.TrimSpace(raw) == "" {
		raw = defaultBaseURL
	}
	u, err := url.Parse(raw)
	if err != nil {
		return endpoints{}, fmt.Errorf("ghclient: Config.BaseURL %q is not a URL: %w", raw, err)
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return endpoints{}, fmt.Errorf("ghclient: Config.BaseURL %q must be an http or https URL", raw)
	}
	if u.Host == "" {
		return endpoints{}, fmt.Errorf("ghclient: Config.BaseURL %q has no host", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return endpoints{}, fmt.Errorf("ghclient: Config.BaseURL %q must not carry a query, fragment or credentials", raw)
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	u.RawPath = ""
	root := u.Scheme + "://" + u.Host

	ep := endpoints{v3: u.String()}
	switch {
	case strings.EqualFold(u.Hostname(), "api.github.com"):
		ep.v4 = root + "/graphql"
		ep.upload = "https://uploads.github.com/"
		ep.web = "https://github.com"
	case strings.HasSuffix(u.Path, "/api/v3/"):
		prefix := strings.TrimSuffix(u.Path, "api/v3/")
		ep.v4 = root + prefix + "api/graphql"
		ep.upload = root + prefix + "api/uploads/"
		ep.web = root + strings.TrimSuffix(prefix, "/")
	default:
		ep.v4 = ep.v3 + "graphql"
		ep.upload = ep.v3
		ep.web = strings.TrimSuffix(ep.v3, "/")
	}
	return ep, nil
}

// uploadURLCreator sets the upload URL go-githubapp leaves at its github.com
// default, which would send GitHub Enterprise or simulator uploads to the
// public site. It also builds REST clients for caller-supplied OAuth tokens
// without the HTTP cache: go-githubapp adds those tokens beneath the cache,
// so the cache could not tell one user's entries from another's.
type uploadURLCreator struct {
	githubapp.ClientCreator
	tokens githubapp.ClientCreator // same options, no cache
	upload *url.URL
}

func (c uploadURLCreator) withUpload(client *github.Client, err error) (*github.Client, error) {
	if err != nil {
		return nil, err
	}
	u := *c.upload
	client.UploadURL = &u
	return client, nil
}

func (c uploadURLCreator) NewAppClient() (*github.Client, error) {
	return c.withUpload(c.ClientCreator.NewAppClient())
}

func (c uploadURLCreator) NewInstallationClient(installationID int64) (*github.Client, error) {
	return c.withUpload(c.ClientCreator.NewInstallationClient(installationID))
}

func (c uploadURLCreator) NewTokenSourceClient(ts oauth2.TokenSource) (*github.Client, error) {
	return c.withUpload(c.tokens.NewTokenSourceClient(ts))
}

func (c uploadURLCreator) NewTokenClient(token string) (*github.Client, error) {
	return c.withUpload(c.tokens.NewTokenClient(token))
}

// baseTransport is a private copy of the default transport, so that tuning it
// does not touch other users of http.DefaultTransport.
func baseTransport() http.RoundTripper {
	t, ok := http.DefaultTransport.(*http.Transport)
	if !ok {
		return http.DefaultTransport
	}
	t = t.Clone()
	// All traffic goes to one host; the default of 2 idle connections per
	// host would make concurrent event handlers churn TCP/TLS connections.
	t.MaxIdleConnsPerHost = 32
	return t
}

// varyOnAuthorization makes the cache key every response on the credentials
// that fetched it. GitHub already sends "Vary: Authorization", but a simulator
// or proxy that omits it would otherwise let one installation (or user token)
// be answered from another's cache entry. It sits below the cache, so the
// cache sees the amended header when it stores the response.
type varyOnAuthorization struct{ next http.RoundTripper }

func (t varyOnAuthorization) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil || req.Header.Get("Authorization") == "" {
		return resp, err
	}
	for _, v := range resp.Header.Values("Vary") {
		for _, f := range strings.Split(v, ",") {
			f = strings.TrimSpace(f)
			if f == "*" || strings.EqualFold(f, "Authorization") {
				return resp, nil
			}
		}
	}
	resp.Header.Add("Vary", "Authorization")
	return resp, nil
}
