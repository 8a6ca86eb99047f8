package ghclient

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-github/v60/github"
)

func TestNewRejectsBadSettings(t *testing.T) {
	valid := Config{BaseURL: "https://ghe.example.com/api/v3/", AppID: testAppID, PrivateKeyPEM: testKeyPEM()}
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string // substring naming the setting; "" means success
	}{
		{"valid", func(*Config) {}, ""},
		{"empty base URL means github.com", func(c *Config) { c.BaseURL = "" }, ""},
		{"simulator over http", func(c *Config) { c.BaseURL = "http://127.0.0.1:9999" }, ""},
		{"unparsable URL", func(c *Config) { c.BaseURL = "://nope" }, "Config.BaseURL"},
		{"wrong scheme", func(c *Config) { c.BaseURL = "ftp://ghe.example.com/" }, "Config.BaseURL"},
		{"no host", func(c *Config) { c.BaseURL = "https:///api/v3/" }, "Config.BaseURL"},
		{"query in URL", func(c *Config) { c.BaseURL = "https://ghe.example.com/api/v3/?x=1" }, "Config.BaseURL"},
		{"missing app id", func(c *Config) { c.AppID = 0 }, "Config.AppID"},
		{"negative app id", func(c *Config) { c.AppID = -3 }, "Config.AppID"},
		{"missing key", func(c *Config) { c.PrivateKeyPEM = nil }, "Config.PrivateKeyPEM"},
		{"garbage key", func(c *Config) { c.PrivateKeyPEM = []byte("not a key") }, "Config.PrivateKeyPEM"},
		{"truncated key", func(c *Config) { c.PrivateKeyPEM = testKeyPEM()[:200] }, "Config.PrivateKeyPEM"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid
			tc.mutate(&cfg)
			cc, err := New(cfg)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tc.wantErr == "" && cc == nil:
				t.Fatal("New returned nil creator")
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("err = %v, want one naming %s", err, tc.wantErr)
			}
		})
	}
}

func TestEndpointsFollowBaseURL(t *testing.T) {
	tests := []struct {
		base                   string
		wantV3, wantV4, wantUp string
		wantWeb                string
	}{
		{"", "https://api.github.com/", "https://api.github.com/graphql", "https://uploads.github.com/", "https://github.com"},
		{"https://api.github.com", "https://api.github.com/", "https://api.github.com/graphql", "https://uploads.github.com/", "https://github.com"},
		{"https://ghe.example.com/api/v3", "https://ghe.example.com/api/v3/", "https://ghe.example.com/api/graphql", "https://ghe.example.com/api/uploads/", "https://ghe.example.com"},
		{"https://ghe.example.com/api/v3/", "https://ghe.example.com/api/v3/", "https://ghe.example.com/api/graphql", "https://ghe.example.com/api/uploads/", "https://ghe.example.com"},
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080/", "http://127.0.0.1:8080/graphql", "http://127.0.0.1:8080/", "http://127.0.0.1:8080"},
		{"http://127.0.0.1:8080/sim", "http://127.0.0.1:8080/sim/", "http://127.0.0.1:8080/sim/graphql", "http://127.0.0.1:8080/sim/", "http://127.0.0.1:8080/sim"},
	}
	for _, tc := range tests {
		t.Run(tc.base, func(t *testing.T) {
			cfg := Config{BaseURL: tc.base, AppID: testAppID, PrivateKeyPEM: testKeyPEM(), WebhookSecret: "s3cret"}
			gc := cfg.GithubappConfig()
			if gc.V3APIURL != tc.wantV3 || gc.V4APIURL != tc.wantV4 || gc.WebURL != tc.wantWeb {
				t.Errorf("GithubappConfig URLs = %q, %q, %q; want %q, %q, %q", gc.V3APIURL, gc.V4APIURL, gc.WebURL, tc.wantV3, tc.wantV4, tc.wantWeb)
			}
			if gc.App.IntegrationID != testAppID || gc.App.WebhookSecret != "s3cret" || gc.App.PrivateKey != string(testKeyPEM()) {
				t.Errorf("GithubappConfig app settings not carried over: %+v", gc.App)
			}

			cc, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			for name, get := range map[string]func() (string, string, error){
				"installation": func() (string, string, error) {
					c, err := cc.NewInstallationClient(1)
					if err != nil {
						return "", "", err
					}
					return c.BaseURL.String(), c.UploadURL.String(), nil
				},
				"app": func() (string, string, error) {
					c, err := cc.NewAppClient()
					if err != nil {
						return "", "", err
					}
					return c.BaseURL.String(), c.UploadURL.String(), nil
				},
				"token": func() (string, string, error) {
					c, err := cc.NewTokenClient("t")
					if err != nil {
						return "", "", err
					}
					return c.BaseURL.String(), c.UploadURL.String(), nil
				},
			} {
				base, up, err := get()
				if err != nil {
					t.Fatalf("%s client: %v", name, err)
				}
				if base != tc.wantV3 || up != tc.wantUp {
					t.Errorf("%s client URLs = %q, %q; want %q, %q", name, base, up, tc.wantV3, tc.wantUp)
				}
			}
		})
	}
}

// TestInstallationTokenMintedOnceAndReused: the fake verifies every JWT
// (RS256, signed with the app key, iss = app id) and counts token requests.
func TestInstallationTokenMintedOnceAndReused(t *testing.T) {
	f := newFakeGitHub(t)
	var badAuth atomic.Int32
	f.mux.HandleFunc("GET /repos/o/r", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "token "+tokenFor("7") {
			badAuth.Add(1)
		}
		step{status: 200, body: `{"name":"r"}`}.write(w)
	})
	cc, err := New(f.config(&sleepRecorder{}))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // a second client for the same installation reuses the first
		client, err := cc.NewInstallationClient(7)
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if _, _, err := client.Repositories.Get(context.Background(), "o", "r"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := f.tokenRequests.Load(); got != 1 {
		t.Errorf("token requests = %d, want 1", got)
	}
	if got := badAuth.Load(); got != 0 {
		t.Errorf("%d API requests lacked the installation token", got)
	}
}

func TestBotLogin(t *testing.T) {
	f := newFakeGitHub(t)
	cc, err := New(f.config(&sleepRecorder{}))
	if err != nil {
		t.Fatal(err)
	}
	got, err := BotLogin(context.Background(), cc)
	if err != nil {
		t.Fatal(err)
	}
	if got != "stagely-test[bot]" {
		t.Errorf("BotLogin = %q, want stagely-test[bot]", got)
	}

	t.Run("no slug is an error", func(t *testing.T) {
		f := newFakeGitHub(t)
		f.appJSON = `{"id":4242}`
		cc, _ := New(f.config(&sleepRecorder{}))
		if _, err := BotLogin(context.Background(), cc); err == nil {
			t.Error("BotLogin succeeded without a slug")
		}
	})
}

// etagServer answers GET /repos/o/r with a fixed ETag and 304 for a matching
// If-None-Match, counting both kinds of request.
type etagServer struct {
	full, conditional atomic.Int32
	vary              bool
}

func (s *etagServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("ETag", `"v1"`)
	w.Header().Set("Cache-Control", "private, max-age=60, s-maxage=60")
	if s.vary {
		w.Header().Set("Vary", "Accept, Authorization, Cookie, X-GitHub-OTP")
	}
	if r.Header.Get("If-None-Match") == `"v1"` {
		s.conditional.Add(1)
		w.WriteHeader(http.StatusNotModified)
		return
	}
	s.full.Add(1)
	step{status: 200, body: fmt.Sprintf(`{"name":"r","description":%q}`, r.Header.Get("Authorization"))}.write(w)
}

func TestNotModifiedServedFromCache(t *testing.T) {
	f := newFakeGitHub(t)
	srv := &etagServer{vary: true}
	f.mux.Handle("GET /repos/o/r", srv)
	client := f.installationClient(t, f.config(&sleepRecorder{}), 1)

	for i := range 3 {
		repo, resp, err := client.Repositories.Get(context.Background(), "o", "r")
		if err != nil {
			t.Fatal(err)
		}
		if repo.GetName() != "r" {
			t.Errorf("call %d: repo name %q, want the cached body", i, repo.GetName())
		}
		if i > 0 && resp.Header.Get("X-From-Cache") != "1" {
			t.Errorf("call %d: not served from cache", i)
		}
		for k, vs := range resp.Header {
			if strings.HasPrefix(k, "X-Varied-") || strings.Contains(strings.Join(vs, " "), tokenFor("1")) {
				t.Errorf("call %d: response header %s exposes the token", i, k)
			}
		}
	}
	// Even within max-age every call is revalidated (the cache must not hand
	// out a stale pull request), and revalidation is the free 304.
	if srv.full.Load() != 1 || srv.conditional.Load() != 2 {
		t.Errorf("server saw %d full and %d conditional requests, want 1 and 2", srv.full.Load(), srv.conditional.Load())
	}
}

// TestCacheKeyedOnCredentials: even when a server forgets "Vary:
// Authorization", one installation is never answered from another's entry.
func TestCacheKeyedOnCredentials(t *testing.T) {
	f := newFakeGitHub(t)
	srv := &etagServer{vary: false}
	f.mux.Handle("GET /repos/o/r", srv)
	cc, err := New(f.config(&sleepRecorder{}))
	if err != nil {
		t.Fatal(err)
	}
	one, _ := cc.NewInstallationClient(1)
	two, _ := cc.NewInstallationClient(2)

	for _, c := range []struct {
		client *github.Client
		want   string
	}{{one, tokenFor("1")}, {two, tokenFor("2")}} {
		repo, _, err := c.client.Repositories.Get(context.Background(), "o", "r")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(repo.GetDescription(), c.want) {
			t.Errorf("got a body fetched with %q, want one fetched with %q", repo.GetDescription(), c.want)
		}
	}
	if srv.conditional.Load() != 0 {
		t.Errorf("installation 2 sent a conditional request with installation 1's ETag")
	}
}

// TestTokenClientsBypassTheCache: go-githubapp adds a caller's OAuth token
// beneath the cache, where the cache cannot key on it, so token clients must
// not use the cache at all.
func TestTokenClientsBypassTheCache(t *testing.T) {
	f := newFakeGitHub(t)
	srv := &etagServer{vary: true}
	f.mux.Handle("GET /repos/o/r", srv)
	cc, err := New(f.config(&sleepRecorder{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, user := range []string{"alice-token", "bob-token"} {
		client, err := cc.NewTokenClient(user)
		if err != nil {
			t.Fatal(err)
		}
		repo, _, err := client.Repositories.Get(context.Background(), "o", "r")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(repo.GetDescription(), user) {
			t.Errorf("%s got a body fetched with %q", user, repo.GetDescription())
		}
	}
	if srv.conditional.Load() != 0 {
		t.Errorf("a token client revalidated another user's cache entry")
	}
}

// TestCacheBoundSharedByAllClients: go-githubapp asks for a cache per client;
// the bound must hold for the creator as a whole, so one client's entries
// evict another's.
func TestCacheBoundSharedByAllClients(t *testing.T) {
	f := newFakeGitHub(t)
	big := strings.Repeat("x", 2000)
	var conditional atomic.Int32
	f.mux.HandleFunc("GET /items/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"`+r.PathValue("id")+`"`)
		if r.Header.Get("If-None-Match") != "" {
			conditional.Add(1)
			w.WriteHeader(http.StatusNotModified)
			return
		}
		step{status: 200, body: fmt.Sprintf(`{"pad":%q}`, big)}.write(w)
	})
	cfg := f.config(&sleepRecorder{})
	cfg.CacheBytes = 3500 // one response fits, two do not
	cc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	one, _ := cc.NewInstallationClient(1)
	two, _ := cc.NewInstallationClient(2)

	get := func(c *github.Client, id string) {
		t.Helper()
		if _, err := call(context.Background(), c, http.MethodGet, "items/"+id); err != nil {
			t.Fatal(err)
		}
	}
	get(one, "a")
	get(one, "a")
	if conditional.Load() != 1 {
		t.Fatalf("second fetch of a was not conditional: nothing cached (bound too small for the test?)")
	}
	get(two, "b") // evicts a if, and only if, the bound is shared
	get(one, "a")
	if got := conditional.Load(); got != 1 {
		t.Errorf("a was still cached after another client filled the cache: bound is per client")
	}
}

func TestMemCacheEvictsToStayUnderBound(t *testing.T) {
	c := newMemCache(100)
	val := func(n int) []byte { return make([]byte, n) }

	c.Set("a", val(39)) // 40 bytes with its key
	c.Set("b", val(39))
	c.Get("a") // a is now more recent than b
	c.Set("c", val(39))
	if _, ok := c.Get("b"); ok {
		t.Error("b survived although it was least recently used")
	}
	for _, k := range []string{"a", "c"} {
		if _, ok := c.Get(k); !ok {
			t.Errorf("%s evicted, want it kept", k)
		}
	}
	if c.bytes() != 80 {
		t.Errorf("bytes = %d, want 80", c.bytes())
	}

	c.Set("a", val(200)) // larger than the bound: dropped, old a with it
	if _, ok := c.Get("a"); ok {
		t.Error("oversized entry stored")
	}
	if _, ok := c.Get("c"); !ok {
		t.Error("oversized entry flushed the rest")
	}
	c.Delete("c")
	if c.bytes() != 0 {
		t.Errorf("bytes = %d after deleting everything, want 0", c.bytes())
	}

	r := rand.New(rand.NewPCG(1, 2))
	for i := range 5000 {
		key := fmt.Sprintf("k%d", r.IntN(50))
		switch r.IntN(4) {
		case 0:
			c.Delete(key)
		case 1:
			c.Get(key)
		default:
			c.Set(key, val(r.IntN(60)))
		}
		if c.bytes() > 100 {
			t.Fatalf("step %d: %d bytes held, bound 100", i, c.bytes())
		}
		var sum int64
		for e := c.order.Front(); e != nil; e = e.Next() {
			ce := e.Value.(*cacheEntry)
			sum += entrySize(ce.key, ce.val)
		}
		if sum != c.bytes() || len(c.items) != c.order.Len() {
			t.Fatalf("step %d: accounting drifted: size %d, entries sum %d", i, c.bytes(), sum)
		}
	}
}
