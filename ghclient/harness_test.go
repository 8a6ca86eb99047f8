package ghclient

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-github/v60/github"
)

const testAppID = 4242

// testKey is generated once per test binary: RSA generation is slow.
var testKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

func testKeyPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(testKey())})
}

// fakeGitHub is a loopback GitHub: it mints installation tokens for valid app
// JWTs, answers GET /app, and routes everything else to handlers the test
// registers.
type fakeGitHub struct {
	t             *testing.T
	srv           *httptest.Server
	mux           *http.ServeMux
	tokenRequests atomic.Int32
	// tokenFailures fails the next token requests with these codes.
	tokenFailures chan int
	appJSON       string // GET /app answer
}

func newFakeGitHub(t *testing.T) *fakeGitHub {
	t.Helper()
	f := &fakeGitHub{
		t: t, mux: http.NewServeMux(), tokenFailures: make(chan int, 8),
		appJSON: `{"id":4242,"slug":"stagely-test","name":"Stagely Test"}`,
	}
	f.mux.HandleFunc("POST /app/installations/{id}/access_tokens", f.handleToken)
	f.mux.HandleFunc("GET /app", f.handleApp)
	f.srv = httptest.NewServer(f.mux) // binds to loopback
	t.Cleanup(f.srv.Close)
	return f
}

func tokenFor(installationID string) string { return "ghs_inst_" + installationID }

func (f *fakeGitHub) handleToken(w http.ResponseWriter, r *http.Request) {
	f.tokenRequests.Add(1)
	if err := verifyAppJWT(r); err != nil {
		f.t.Errorf("token request: %v", err)
		http.Error(w, `{"message":"bad JWT"}`, http.StatusUnauthorized)
		return
	}
	select {
	case code := <-f.tokenFailures:
		w.WriteHeader(code)
		io.WriteString(w, `{"message":"injected failure"}`)
		return
	default:
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(map[string]any{
		"token":      tokenFor(r.PathValue("id")),
		"expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
	})
}

func (f *fakeGitHub) handleApp(w http.ResponseWriter, r *http.Request) {
	if err := verifyAppJWT(r); err != nil {
		f.t.Errorf("GET /app: %v", err)
		http.Error(w, `{"message":"bad JWT"}`, http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, f.appJSON)
}

// verifyAppJWT checks that the request carries an app JWT: RS256, signed with
// testKey, issued by testAppID, currently valid.
func verifyAppJWT(r *http.Request) error {
	raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return fmt.Errorf("authorization %q is not a bearer JWT", r.Header.Get("Authorization"))
	}
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return fmt.Errorf("JWT has %d parts", len(parts))
	}
	var header struct {
		Alg string `json:"alg"`
	}
	var claims struct {
		Iss string `json:"iss"`
		Iat int64  `json:"iat"`
		Exp int64  `json:"exp"`
	}
	for i, dst := range []any{&header, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			return fmt.Errorf("JWT part %d: %w", i, err)
		}
		if err := json.Unmarshal(b, dst); err != nil {
			return fmt.Errorf("JWT part %d: %w", i, err)
		}
	}
	if header.Alg != "RS256" {
		return fmt.Errorf("JWT alg = %q, want RS256", header.Alg)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return fmt.Errorf("JWT signature: %w", err)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(&testKey().PublicKey, crypto.SHA256, digest[:], sig); err != nil {
		return fmt.Errorf("JWT signature does not verify with the app key: %w", err)
	}
	if claims.Iss != strconv.Itoa(testAppID) {
		return fmt.Errorf("JWT iss = %q, want %d", claims.Iss, testAppID)
	}
	if now := time.Now().Unix(); claims.Iat > now+1 || claims.Exp < now {
		return fmt.Errorf("JWT not valid now: iat %d exp %d now %d", claims.Iat, claims.Exp, now)
	}
	return nil
}

// config returns a creator configuration pointed at the fake, with waits
// recorded (and skipped) by rec.
func (f *fakeGitHub) config(rec *sleepRecorder) Config {
	return Config{
		BaseURL:       f.srv.URL,
		AppID:         testAppID,
		PrivateKeyPEM: testKeyPEM(),
		Sleep:         rec.Sleep,
		Timeout:       5 * time.Second,
	}
}

func (f *fakeGitHub) installationClient(t *testing.T, cfg Config, installationID int64) *github.Client {
	t.Helper()
	cc, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	client, err := cc.NewInstallationClient(installationID)
	if err != nil {
		t.Fatalf("NewInstallationClient: %v", err)
	}
	return client
}

// sleepRecorder is an injectable Config.Sleep that records every wait and
// returns at once, or runs hook when one is set.
type sleepRecorder struct {
	mu    sync.Mutex
	waits []time.Duration
	hook  func(ctx context.Context, d time.Duration) error
}

func (s *sleepRecorder) Sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.waits = append(s.waits, d)
	hook := s.hook
	s.mu.Unlock()
	if hook != nil {
		return hook(ctx, d)
	}
	return ctx.Err()
}

func (s *sleepRecorder) Waits() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.waits...)
}

// step is one canned response.
type step struct {
	status int
	header map[string]string
	body   string
}

func (st step) write(w http.ResponseWriter) {
	for k, v := range st.header {
		w.Header().Set(k, v)
	}
	if st.body != "" {
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(st.status)
	io.WriteString(w, st.body)
}

const secondaryBody = `{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",` +
	`"documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"}`

func secondary(retryAfter string) step {
	st := step{status: http.StatusForbidden, body: secondaryBody}
	if retryAfter != "" {
		st.header = map[string]string{"Retry-After": retryAfter}
	}
	return st
}

func primary(reset time.Time) step {
	return step{status: http.StatusForbidden, body: `{"message":"API rate limit exceeded for installation ID 1."}`,
		header: map[string]string{
			"X-RateLimit-Limit":     "5000",
			"X-RateLimit-Remaining": "0",
			"X-RateLimit-Reset":     strconv.FormatInt(reset.Unix(), 10),
		}}
}

func status(code int) step {
	return step{status: code, body: fmt.Sprintf(`{"message":"%s"}`, http.StatusText(code))}
}

func ok() step { return step{status: http.StatusOK, body: `{"ok":true}`} }

// script serves its steps in order, repeating the last, and records what it
// was sent.
type script struct {
	mu     sync.Mutex
	steps  []step
	calls  int
	bodies []string
}

func newScript(steps ...step) *script { return &script{steps: steps} }

func (s *script) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	st := s.steps[min(s.calls, len(s.steps)-1)]
	s.calls++
	s.bodies = append(s.bodies, string(b))
	s.mu.Unlock()
	st.write(w)
}

func (s *script) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

func (s *script) Bodies() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.bodies...)
}

// call sends one request through go-github: a JSON body for methods that
// carry one.
func call(ctx context.Context, client *github.Client, method, path string) (*github.Response, error) {
	var body any
	if method != http.MethodGet && method != http.MethodHead && method != http.MethodDelete {
		body = map[string]string{"body": "hello"}
	}
	req, err := client.NewRequest(method, path, body)
	if err != nil {
		return nil, err
	}
	return client.Do(ctx, req, io.Discard) // read to EOF, as real calls do
}

func statusOf(resp *github.Response) int {
	if resp == nil || resp.Response == nil {
		return 0
	}
	return resp.StatusCode
}

// between is an inclusive range a recorded wait must fall in.
type between [2]time.Duration

func exactly(ds ...time.Duration) []between {
	out := make([]between, len(ds))
	for i, d := range ds {
		out[i] = between{d, d}
	}
	return out
}

func checkWaits(t *testing.T, got []time.Duration, want []between) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("waits = %v, want %d waits in %v", got, len(want), want)
	}
	for i := range got {
		if got[i] < want[i][0] || got[i] > want[i][1] {
			t.Errorf("wait %d = %v, want within [%v, %v] (all waits %v)", i, got[i], want[i][0], want[i][1], got)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
