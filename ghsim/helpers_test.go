package ghsim

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-github/v60/github"
)

// testKeyPEM is one App key for the whole test binary: generating RSA keys
// is the slowest part of New.
var testKeyPEM = sync.OnceValue(func() []byte {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
})

const hookSecret = "It's a Secret to Everybody"

// hookReceiver is a webhook endpoint that checks signatures and keeps what
// it got.
type hookReceiver struct {
	t      *testing.T
	mu     sync.Mutex
	got    []receivedHook
	status int
}

type receivedHook struct {
	header http.Header
	body   []byte
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	h.got = append(h.got, receivedHook{r.Header.Clone(), body})
	status := h.status
	h.mu.Unlock()
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
}

func (h *hookReceiver) last() receivedHook {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.got) == 0 {
		h.t.Fatal("no webhook received")
	}
	return h.got[len(h.got)-1]
}

func (h *hookReceiver) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.got)
}

// fixture is a simulator behind an HTTP server with one installation on the
// organization "acme" holding the repository acme/widgets.
type fixture struct {
	t     *testing.T
	ctx   context.Context
	sim   *Sim
	srv   *httptest.Server
	hooks *hookReceiver
	inst  int64
	sha   string // acme/widgets main
}

func newFixture(t *testing.T, mods ...func(*Config)) *fixture {
	t.Helper()
	hooks := &hookReceiver{t: t}
	hookSrv := httptest.NewServer(hooks)
	t.Cleanup(hookSrv.Close)
	cfg := Config{
		AppID:            4242,
		AppSlug:          "stagely-test",
		AppPrivateKeyPEM: testKeyPEM(),
		WebhookURL:       hookSrv.URL,
		WebhookSecret:    hookSecret,
		CheckResponses:   true,
	}
	for _, m := range mods {
		m(&cfg)
	}
	sim, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	sim.SetBaseURL(srv.URL)
	f := &fixture{t: t, ctx: context.Background(), sim: sim, srv: srv, hooks: hooks}

	inst, err := sim.CreateInstallation(f.ctx, InstallationSpec{Account: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	f.inst = inst.ID
	repo, err := sim.CreateRepo(f.ctx, RepoSpec{Owner: "acme", Name: "widgets", Private: true, Files: map[string]string{
		"README.md":           "# widgets\n",
		"stagely.yaml":        "version: 1\n",
		"src/main.go":         "package main\n\nfunc main() {}\n",
		"src/internal/lib.go": "package internal\n",
	}})
	if err != nil {
		t.Fatal(err)
	}
	f.sha = repo.SHA

	// Every answer the simulator gave in the test must match GitHub's
	// description: the simulator checks itself with CheckResponses.
	t.Cleanup(func() {
		for _, r := range sim.Requests() {
			if r.ResponseError != "" {
				t.Errorf("simulator answered %s %s with a response that does not match the spec: %s", r.Method, r.Path, r.ResponseError)
			}
		}
	})
	return f
}

func (f *fixture) token() string {
	f.t.Helper()
	tok, _, err := f.sim.InstallationToken(f.inst)
	if err != nil {
		f.t.Fatal(err)
	}
	return tok
}

func (f *fixture) jwt() string {
	f.t.Helper()
	j, err := f.sim.AppJWT()
	if err != nil {
		f.t.Fatal(err)
	}
	return j
}

// do sends an API request with "Authorization: token <auth>" (none if auth
// is empty) and returns the response and its body.
func (f *fixture) do(method, path, auth string, body any, hdr ...string) (*http.Response, []byte) {
	f.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			f.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, f.srv.URL+path, rd)
	if err != nil {
		f.t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", "token "+auth)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := noRedirect().Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	return resp, b
}

func noRedirect() *http.Client {
	return &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (f *fixture) rebase(c *github.Client) *github.Client {
	f.t.Helper()
	c, err := c.WithEnterpriseURLs(f.srv.URL+"/api/v3/", f.srv.URL+"/api/uploads/")
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

func (f *fixture) openPR(spec PRSpec) Result {
	f.t.Helper()
	if spec.Owner == "" {
		spec.Owner, spec.Repo = "acme", "widgets"
	}
	res, err := f.sim.OpenPR(f.ctx, spec)
	if err != nil {
		f.t.Fatal(err)
	}
	return res
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
	return v
}

func wantStatus(t *testing.T, resp *http.Response, body []byte, want int) {
	t.Helper()
	if resp.StatusCode != want {
		t.Fatalf("%s %s: status %d, want %d; body %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, want, body)
	}
}

func signature(alg string, body []byte) string {
	var m interface {
		Write([]byte) (int, error)
		Sum([]byte) []byte
	}
	if alg == "sha1" {
		m = hmac.New(sha1.New, []byte(hookSecret))
	} else {
		m = hmac.New(sha256.New, []byte(hookSecret))
	}
	m.Write(body)
	return alg + "=" + hex.EncodeToString(m.Sum(nil))
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func decodeBody(resp *http.Response, v any) error {
	return json.NewDecoder(resp.Body).Decode(v)
}
