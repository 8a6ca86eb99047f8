package ghsim

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// Config configures a Sim. The zero value works: a key is generated and
// webhooks are built, validated and kept but not sent.
type Config struct {
	AppID   int64  // default 1
	AppSlug string // default "stagely"; the App's bot user is AppSlug+"[bot]"

	// AppPrivateKeyPEM is the App's RSA private key (PKCS#1 or PKCS#8 PEM)
	// that App JWTs must be signed with. A 2048-bit key is generated when nil.
	AppPrivateKeyPEM []byte

	// WebhookURL receives the webhooks (none are sent while empty);
	// WebhookSecret signs them (no signature headers while empty, as GitHub).
	WebhookURL, WebhookSecret string

	// RecordPath, when set, gets one JSON line appended per API request.
	RecordPath string

	// BaseURL is the public URL of the simulator used in response bodies and
	// redirects; usually set later with SetBaseURL once the server listens.
	BaseURL string

	// Now is the clock; default time.Now. Sim.Advance moves it forward.
	Now func() time.Time

	// HTTPClient delivers webhooks; default a client with GitHub's 10 s timeout.
	HTTPClient *http.Client

	// CheckResponses validates every API response against the spec too; a
	// mismatch is a simulator bug and shows in Request.ResponseError.
	CheckResponses bool
}

// Sim is a simulated GitHub. It is an http.Handler serving both the REST API
// and the admin API under /_ghsim/. All methods are safe for concurrent use.
type Sim struct {
	cfg    Config
	key    *rsa.PrivateKey
	keyPEM []byte
	spec   *restSpec
	hooks  *hookSchemas
	client *http.Client
	hookID int64
	admin  *http.ServeMux

	mu         sync.Mutex
	baseURL    string
	webhookURL string
	offset     time.Duration
	st         *state
	app        *account // the App's owner
	bot        *account // the App's bot user
	appCreated time.Time
	records    []Request
	recordFile *os.File
	faults     []*fault
	rate       map[string]*rateBucket
	deliveries []*Delivery

	// packed keeps the last tarballs built: a commit's archive never
	// changes, and agents retrying a deploy ask for the same one again.
	packed tarballCache
}

// New builds a Sim: it loads the embedded spec and webhook schemas and, if
// needed, generates the App key.
func New(cfg Config) (*Sim, error) {
	if cfg.AppID == 0 {
		cfg.AppID = 1
	}
	if cfg.AppSlug == "" {
		cfg.AppSlug = "stagely"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Sim{
		cfg:        cfg,
		client:     cfg.HTTPClient,
		hookID:     400000000 + cfg.AppID,
		baseURL:    strings.TrimRight(cfg.BaseURL, "/"),
		webhookURL: cfg.WebhookURL,
		st:         newState(),
	}
	if s.client == nil {
		s.client = &http.Client{Timeout: 10 * time.Second}
	}
	if s.baseURL == "" {
		s.baseURL = "http://ghsim.invalid"
	}
	var err error
	if s.key, s.keyPEM, err = loadOrGenerateKey(cfg.AppPrivateKeyPEM); err != nil {
		return nil, err
	}
	if s.spec, err = loadRESTSpec(); err != nil {
		return nil, err
	}
	if s.hooks, err = loadHookSchemas(); err != nil {
		return nil, err
	}
	if cfg.RecordPath != "" {
		if s.recordFile, err = os.OpenFile(cfg.RecordPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err != nil {
			return nil, fmt.Errorf("ghsim: open record file: %w", err)
		}
	}
	s.app = s.st.accountFor(cfg.AppSlug+"-owner", typeOrg)
	s.bot = s.st.accountFor(cfg.AppSlug+"[bot]", typeBot)
	s.appCreated = s.now().Add(-24 * time.Hour)
	s.admin = s.adminMux()
	return s, nil
}

// Close releases the record file, if any.
func (s *Sim) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recordFile == nil {
		return nil
	}
	err := s.recordFile.Close()
	s.recordFile = nil
	return err
}

func loadOrGenerateKey(pemBytes []byte) (*rsa.PrivateKey, []byte, error) {
	if pemBytes == nil {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, nil, fmt.Errorf("ghsim: generate app key: %w", err)
		}
		pemBytes = pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
		return key, pemBytes, nil
	}
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, nil, errors.New("ghsim: app private key is not PEM")
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, pemBytes, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("ghsim: parse app private key: %w", err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, nil, errors.New("ghsim: app private key is not RSA (GitHub Apps use RS256)")
	}
	return rk, pemBytes, nil
}

// AppID is the simulated App's id (the JWT issuer).
func (s *Sim) AppID() int64 { return s.cfg.AppID }

// AppSlug is the simulated App's slug.
func (s *Sim) AppSlug() string { return s.cfg.AppSlug }

// BotLogin is the login of the App's bot user, AppSlug+"[bot]".
func (s *Sim) BotLogin() string { return s.bot.login }

// AppPrivateKeyPEM returns the App's private key, to configure the client.
func (s *Sim) AppPrivateKeyPEM() []byte { return append([]byte(nil), s.keyPEM...) }

// SetBaseURL sets the public URL of the simulator (e.g. httptest.Server.URL),
// used for the URLs inside responses and webhook payloads.
func (s *Sim) SetBaseURL(u string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.baseURL = strings.TrimRight(u, "/")
}

// BaseURL returns the public URL set by Config.BaseURL or SetBaseURL.
func (s *Sim) BaseURL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.baseURL
}

// SetWebhookURL changes where webhooks go; useful when the receiver starts
// after the simulator.
func (s *Sim) SetWebhookURL(u string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.webhookURL = u
}

// Now is the simulator's clock.
func (s *Sim) Now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.now()
}

// Advance moves the simulator's clock forward, e.g. past an installation
// token's hour. Only the simulator's clock moves: a client signing JWTs with
// the real clock will see them rejected as expired afterwards, as GitHub would
// with a skewed clock.
func (s *Sim) Advance(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.offset += d
}

// now must be called with s.mu held (or before the Sim is shared).
func (s *Sim) now() time.Time {
	return s.cfg.Now().Add(s.offset).UTC().Truncate(time.Second)
}

// ServeHTTP serves the REST API, tarball downloads and the admin API.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasPrefix(r.URL.Path, adminPrefix):
		s.serveAdmin(w, r)
	case strings.HasPrefix(r.URL.Path, codeloadPrefix):
		s.serveCodeload(w, r)
	default:
		s.serveAPI(w, r)
	}
}
