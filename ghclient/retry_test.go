package ghclient

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-github/v60/github"
)

func TestRateLimitedRequestsWaitAndRetry(t *testing.T) {
	tests := []struct {
		name       string
		method     string
		maxRetries int
		steps      []step
		wantCalls  int
		wantWaits  []between
		wantStatus int
		wantErr    func(error) bool
	}{
		{
			name:   "secondary limit with Retry-After waits exactly that long",
			method: http.MethodGet, steps: []step{secondary("3"), ok()},
			wantCalls: 2, wantWaits: exactly(3 * time.Second), wantStatus: 200,
		},
		{
			name:      "any 403 with Retry-After is treated as a secondary limit",
			method:    http.MethodGet,
			steps:     []step{{status: 403, header: map[string]string{"Retry-After": "2"}, body: `{"message":"slow down"}`}, ok()},
			wantCalls: 2, wantWaits: exactly(2 * time.Second), wantStatus: 200,
		},
		{
			name:   "secondary limit without Retry-After waits a minute",
			method: http.MethodGet, steps: []step{secondary(""), ok()},
			wantCalls: 2, wantWaits: exactly(time.Minute), wantStatus: 200,
		},
		{
			name:   "repeated secondary limits back off exponentially",
			method: http.MethodGet, steps: []step{secondary(""), secondary(""), secondary(""), ok()},
			wantCalls: 4, wantWaits: exactly(time.Minute, 2*time.Minute, 4*time.Minute), wantStatus: 200,
		},
		{
			name:      "429 with Retry-After",
			method:    http.MethodGet,
			steps:     []step{{status: 429, header: map[string]string{"Retry-After": "5"}}, ok()},
			wantCalls: 2, wantWaits: exactly(5 * time.Second), wantStatus: 200,
		},
		{
			name:   "POST is re-sent after a secondary limit: GitHub rejected it unprocessed",
			method: http.MethodPost, steps: []step{secondary(""), {status: 201, body: `{}`}},
			wantCalls: 2, wantWaits: exactly(time.Minute), wantStatus: 201,
		},
		{
			name:   "primary limit waits until X-RateLimit-Reset",
			method: http.MethodGet, steps: []step{primary(time.Now().Add(30 * time.Second)), ok()},
			wantCalls: 2, wantWaits: []between{{28 * time.Second, 31 * time.Second}}, wantStatus: 200,
		},
		{
			name:   "attempts are bounded by MaxRetries",
			method: http.MethodGet, maxRetries: 2, steps: []step{secondary("")},
			wantCalls: 3, wantWaits: exactly(time.Minute, 2*time.Minute), wantStatus: 403,
			wantErr: func(err error) bool { var e *github.AbuseRateLimitError; return errors.As(err, &e) },
		},
		{
			name:   "plain 403 is not a rate limit and is not retried",
			method: http.MethodGet, steps: []step{{status: 403, body: `{"message":"Resource not accessible by integration"}`}},
			wantCalls: 1, wantWaits: nil, wantStatus: 403,
			wantErr: func(err error) bool { var e *github.ErrorResponse; return errors.As(err, &e) },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeGitHub(t)
			s := newScript(tc.steps...)
			f.mux.Handle("/test/resource", s)
			rec := &sleepRecorder{}
			cfg := f.config(rec)
			cfg.MaxRetries = tc.maxRetries
			client := f.installationClient(t, cfg, 1)

			resp, err := call(context.Background(), client, tc.method, "test/resource")

			if tc.wantErr == nil && err != nil {
				t.Fatalf("err = %v, want success", err)
			}
			if tc.wantErr != nil && !tc.wantErr(err) {
				t.Fatalf("err = %v (%T), not the expected kind", err, err)
			}
			if got := statusOf(resp); got != tc.wantStatus {
				t.Errorf("status = %d, want %d", got, tc.wantStatus)
			}
			if got := s.Calls(); got != tc.wantCalls {
				t.Errorf("server saw %d requests, want %d", got, tc.wantCalls)
			}
			checkWaits(t, rec.Waits(), tc.wantWaits)
			for i, b := range s.Bodies() {
				if b != s.Bodies()[0] {
					t.Errorf("attempt %d sent body %q, want the replayed %q", i+1, b, s.Bodies()[0])
				}
			}
		})
	}
}

func TestServerErrorsRetriedOnlyWhenSafe(t *testing.T) {
	tests := []struct {
		name       string
		method     string
		maxRetries int
		steps      []step
		wantCalls  int
		wantWaits  []between
		wantStatus int
	}{
		{
			name: "GET 502 twice then 200 is retried with jittered backoff", method: http.MethodGet,
			steps:     []step{status(502), status(502), ok()},
			wantCalls: 3, wantStatus: 200,
			wantWaits: []between{{500 * time.Millisecond, time.Second}, {time.Second, 2 * time.Second}},
		},
		{
			name: "POST 502 is not re-sent: GitHub may have acted on it", method: http.MethodPost,
			steps:     []step{status(502), {status: 201}},
			wantCalls: 1, wantStatus: 502,
		},
		{
			name: "PUT 503 honours Retry-After as a floor", method: http.MethodPut,
			steps:     []step{{status: 503, header: map[string]string{"Retry-After": "7"}}, {status: 204}},
			wantCalls: 2, wantStatus: 204, wantWaits: exactly(7 * time.Second),
		},
		{
			name: "PATCH 500 retried until MaxRetries", method: http.MethodPatch, maxRetries: 2,
			steps:     []step{status(500)},
			wantCalls: 3, wantStatus: 500,
			wantWaits: []between{{500 * time.Millisecond, time.Second}, {time.Second, 2 * time.Second}},
		},
		{
			name: "DELETE 504 retried", method: http.MethodDelete,
			steps:     []step{status(504), {status: 204}},
			wantCalls: 2, wantStatus: 204,
			wantWaits: []between{{500 * time.Millisecond, time.Second}},
		},
		{
			name: "501 is not transient", method: http.MethodGet,
			steps:     []step{status(501), ok()},
			wantCalls: 1, wantStatus: 501,
		},
		{
			name: "404 is not retried", method: http.MethodGet,
			steps:     []step{status(404), ok()},
			wantCalls: 1, wantStatus: 404,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeGitHub(t)
			s := newScript(tc.steps...)
			f.mux.Handle("/test/resource", s)
			rec := &sleepRecorder{}
			cfg := f.config(rec)
			cfg.MaxRetries = tc.maxRetries
			client := f.installationClient(t, cfg, 1)

			resp, err := call(context.Background(), client, tc.method, "test/resource")

			if got := statusOf(resp); got != tc.wantStatus {
				t.Errorf("status = %d (err %v), want %d", got, err, tc.wantStatus)
			}
			if (err == nil) != (tc.wantStatus < 300) {
				t.Errorf("err = %v for status %d", err, tc.wantStatus)
			}
			if got := s.Calls(); got != tc.wantCalls {
				t.Errorf("server saw %d requests, want %d", got, tc.wantCalls)
			}
			checkWaits(t, rec.Waits(), tc.wantWaits)
		})
	}
}

// TestRetryMakesTheDifference fails if the retry middleware is removed or
// disabled: the same server, the same call, only MaxRetries differs.
func TestRetryMakesTheDifference(t *testing.T) {
	for _, tc := range []struct {
		name       string
		maxRetries int
		wantErr    bool
	}{
		{"with retries the call succeeds", 0, false},
		{"with retries disabled the same call fails", -1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeGitHub(t)
			f.mux.Handle("/test/resource", newScript(secondary("1"), status(502), ok()))
			cfg := f.config(&sleepRecorder{})
			cfg.MaxRetries = tc.maxRetries
			_, err := call(context.Background(), f.installationClient(t, cfg, 1), http.MethodGet, "test/resource")
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
		})
	}
}

func TestTransientWaitIsJittered(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 200 {
		d := transientWait(2, 0)
		if d < 2*time.Second || d > 4*time.Second {
			t.Fatalf("third retry wait %v outside [2s, 4s]", d)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Errorf("only %d distinct waits in 200 draws: not jittered", len(seen))
	}
	if d := transientWait(20, 0); d > transientMaxWait {
		t.Errorf("wait %v exceeds cap %v", d, transientMaxWait)
	}
}

func TestSecondaryWaitGrowsAndCaps(t *testing.T) {
	for _, tc := range []struct {
		base    time.Duration
		strikes int
		want    time.Duration
	}{
		{time.Minute, 1, time.Minute},
		{time.Minute, 2, 2 * time.Minute},
		{time.Minute, 3, 4 * time.Minute},
		{time.Minute, 10, secondaryMaxWait},
		{3 * time.Second, 1, 3 * time.Second},
		{3 * time.Second, 3, 12 * time.Second},
		{time.Hour, 2, time.Hour}, // never less than the server asked for
	} {
		if got := secondaryWait(tc.base, tc.strikes); got != tc.want {
			t.Errorf("secondaryWait(%v, %d) = %v, want %v", tc.base, tc.strikes, got, tc.want)
		}
	}
}

// TestPOSTRetriedWhenItNeverLeft covers the exception to "never re-send a
// POST": the request provably did not reach GitHub.
func TestPOSTRetriedWhenItNeverLeft(t *testing.T) {
	t.Run("installation token fetch failed with 502", func(t *testing.T) {
		f := newFakeGitHub(t)
		f.tokenFailures <- http.StatusBadGateway
		s := newScript(step{status: 201, body: `{"id":1}`})
		f.mux.Handle("POST /repos/o/r/issues/1/comments", s)
		rec := &sleepRecorder{}
		client := f.installationClient(t, f.config(rec), 1)

		_, _, err := client.Issues.CreateComment(context.Background(), "o", "r", 1, &github.IssueComment{Body: github.String("hi")})
		if err != nil {
			t.Fatalf("CreateComment: %v", err)
		}
		if got := s.Calls(); got != 1 {
			t.Errorf("comment endpoint saw %d requests, want exactly 1", got)
		}
		if got := f.tokenRequests.Load(); got != 2 {
			t.Errorf("token requests = %d, want 2 (one failed, one retried)", got)
		}
		checkWaits(t, rec.Waits(), []between{{500 * time.Millisecond, time.Second}})
	})

	// Transport errors cannot be staged reliably over a real socket, so these
	// drive the middleware directly with a scripted inner transport.
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	for _, tc := range []struct {
		name      string
		method    string
		firstErr  error
		wantCalls int
		wantErr   bool
	}{
		{"POST that failed to connect is re-sent", http.MethodPost, refused, 2, false},
		{"POST that failed after connecting is not re-sent", http.MethodPost, io.ErrUnexpectedEOF, 1, true},
		{"GET that failed after connecting is re-sent", http.MethodGet, io.ErrUnexpectedEOF, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls int
			var bodies []string
			inner := roundTripFunc(func(r *http.Request) (*http.Response, error) {
				calls++
				if r.Body != nil {
					b, _ := io.ReadAll(r.Body)
					r.Body.Close()
					bodies = append(bodies, string(b))
				}
				if calls == 1 {
					return nil, tc.firstErr
				}
				return &http.Response{StatusCode: 201, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
			})
			rt := (&retrier{gate: newGate(), maxRetries: 3, sleep: (&sleepRecorder{}).Sleep}).wrap(inner)
			req, _ := http.NewRequest(tc.method, "http://127.0.0.1:1/x", strings.NewReader("payload"))
			resp, err := rt.RoundTrip(req)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if resp != nil {
				resp.Body.Close()
			}
			if calls != tc.wantCalls {
				t.Errorf("inner transport called %d times, want %d", calls, tc.wantCalls)
			}
			for _, b := range bodies {
				if tc.method == http.MethodPost && b != "payload" {
					t.Errorf("attempt sent body %q, want the replayed payload", b)
				}
			}
		})
	}
}

func TestBodyWithoutGetBodyIsSentOnce(t *testing.T) {
	var calls int
	inner := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		calls++
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
		return &http.Response{StatusCode: 403, Header: http.Header{"Retry-After": {"1"}}, Body: io.NopCloser(strings.NewReader(secondaryBody)), Request: r}, nil
	})
	rec := &sleepRecorder{}
	rt := (&retrier{gate: newGate(), maxRetries: 3, sleep: rec.Sleep}).wrap(inner)
	req, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1:1/x", io.NopCloser(strings.NewReader("stream")))
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 403 || calls != 1 || len(rec.Waits()) != 0 {
		t.Errorf("status %d, calls %d, waits %v: want the 403 after one call, no wait", resp.StatusCode, calls, rec.Waits())
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != secondaryBody {
		t.Errorf("body after classification = %q, want it intact", b)
	}
}

func TestPerAttemptTimeout(t *testing.T) {
	for _, tc := range []struct {
		name      string
		method    string
		wantCalls int
		wantErr   bool
	}{
		{"GET that hangs is abandoned and retried", http.MethodGet, 2, false},
		{"POST that hangs is abandoned, not re-sent", http.MethodPost, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeGitHub(t)
			var calls atomic.Int32
			release := make(chan struct{})
			t.Cleanup(func() { close(release) }) // runs before the server's Close waits for handlers
			f.mux.HandleFunc("/test/resource", func(w http.ResponseWriter, r *http.Request) {
				if calls.Add(1) == 1 {
					select { // hang past the client's per-attempt timeout
					case <-r.Context().Done():
					case <-release:
					}
					return
				}
				ok().write(w)
			})
			cfg := f.config(&sleepRecorder{})
			cfg.Timeout = 200 * time.Millisecond
			client := f.installationClient(t, cfg, 1)
			start := time.Now()
			_, err := call(context.Background(), client, tc.method, "test/resource")
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if got := int(calls.Load()); got != tc.wantCalls {
				t.Errorf("server saw %d requests, want %d", got, tc.wantCalls)
			}
			if el := time.Since(start); el > 3*time.Second {
				t.Errorf("took %v: per-attempt timeout not applied", el)
			}
		})
	}
}

// TestSecondaryLimitGateStopsTheStorm: once one request hits a secondary
// limit, every other request through the creator, on any installation's
// client, waits for that one block instead of each trying its own luck.
func TestSecondaryLimitGateStopsTheStorm(t *testing.T) {
	f := newFakeGitHub(t)
	var limited atomic.Bool
	limited.Store(true)
	var hits, hitsWhileLimited atomic.Int32
	f.mux.HandleFunc("/test/resource", func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if limited.Load() {
			hitsWhileLimited.Add(1)
			secondary("60").write(w)
			return
		}
		ok().write(w)
	})

	sleeping := make(chan struct{}, 1)
	release := make(chan struct{})
	rec := &sleepRecorder{hook: func(ctx context.Context, d time.Duration) error {
		sleeping <- struct{}{}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	cc, g, err := newCreator(f.config(rec))
	if err != nil {
		t.Fatal(err)
	}
	clients := make([]*github.Client, 5)
	for i := range clients {
		if clients[i], err = cc.NewInstallationClient(int64(i + 1)); err != nil {
			t.Fatal(err)
		}
	}

	const n = 50
	errs := make(chan error, n)
	var wg sync.WaitGroup
	send := func(i int) {
		defer wg.Done()
		_, err := call(context.Background(), clients[i%len(clients)], http.MethodGet, "test/resource")
		errs <- err
	}
	wg.Add(1)
	go send(0)
	select {
	case <-sleeping:
	case <-time.After(5 * time.Second):
		t.Fatal("first request never started waiting")
	}

	// The block is in force: the other 49 must queue without a single
	// request reaching the server.
	for i := 1; i < n; i++ {
		wg.Add(1)
		go send(i)
	}
	waitFor(t, "49 parked requests", func() bool { return g.waiting() == n-1 })
	time.Sleep(20 * time.Millisecond) // give a leaking request time to show
	if got := hits.Load(); got != 1 {
		t.Fatalf("server saw %d requests during the block, want 1", got)
	}

	limited.Store(false)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("request failed: %v", err)
		}
	}
	checkWaits(t, rec.Waits(), exactly(time.Minute)) // one shared wait, not 50
	if got := hits.Load(); got != n+1 {
		t.Errorf("server saw %d requests, want %d (the limited one, its probe, 49 others)", got, n+1)
	}
	if got := hitsWhileLimited.Load(); got != 1 {
		t.Errorf("server saw %d requests while limited, want 1", got)
	}
}

// TestSecondaryLimitBurst fires 50 requests at once at a server that stays
// limited for 150 s of (virtual) time. Requests already in flight when the
// limit hit cannot be recalled, but after that only the single probe may
// reach the server, and there is one chain of waits, not one per request.
func TestSecondaryLimitBurst(t *testing.T) {
	f := newFakeGitHub(t)
	var clock atomic.Int64 // virtual seconds, advanced by Sleep
	var limitedHits, okHits atomic.Int32
	f.mux.HandleFunc("/test/resource", func(w http.ResponseWriter, r *http.Request) {
		if clock.Load() < 150 {
			limitedHits.Add(1)
			secondary("").write(w)
			return
		}
		okHits.Add(1)
		ok().write(w)
	})
	rec := &sleepRecorder{hook: func(ctx context.Context, d time.Duration) error {
		clock.Add(int64(d / time.Second))
		return ctx.Err()
	}}
	client := f.installationClient(t, f.config(rec), 1)

	const n = 50
	var wg sync.WaitGroup
	var failed atomic.Int32
	start := make(chan struct{})
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if _, err := call(context.Background(), client, http.MethodGet, "test/resource"); err != nil {
				failed.Add(1)
				t.Errorf("request failed: %v", err)
			}
		}()
	}
	close(start)
	wg.Wait()

	checkWaits(t, rec.Waits(), exactly(time.Minute, 2*time.Minute))
	// At most one limited response per request that was already in flight,
	// plus the leader's one limited probe.
	if got := limitedHits.Load(); got > n+1 {
		t.Errorf("server saw %d limited requests, want at most %d", got, n+1)
	}
	if got := okHits.Load(); got != n {
		t.Errorf("server answered %d requests OK, want %d", got, n)
	}
}

func TestContextCancelledWhileWaiting(t *testing.T) {
	t.Run("leader sleeping out a secondary limit", func(t *testing.T) {
		f := newFakeGitHub(t)
		f.mux.Handle("/test/resource", newScript(secondary("60")))
		cfg := f.config(nil)
		cfg.Sleep = nil // the real timer, which must give way to ctx
		client := f.installationClient(t, cfg, 1)

		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		start := time.Now()
		_, err := call(ctx, client, http.MethodGet, "test/resource")
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Errorf("returned after %v, want promptly", el)
		}
	})

	t.Run("request parked behind another's block", func(t *testing.T) {
		f := newFakeGitHub(t)
		f.mux.Handle("/test/resource", newScript(secondary("60")))
		cfg := f.config(nil)
		cfg.Sleep = nil
		cc, g, err := newCreator(cfg)
		if err != nil {
			t.Fatal(err)
		}
		client, _ := cc.NewInstallationClient(1)

		leaderCtx, stopLeader := context.WithCancel(context.Background())
		leaderDone := make(chan struct{})
		go func() {
			defer close(leaderDone)
			call(leaderCtx, client, http.MethodGet, "test/resource")
		}()
		defer func() { stopLeader(); <-leaderDone }()
		waitFor(t, "the block to start", func() bool {
			g.mu.Lock()
			defer g.mu.Unlock()
			return g.led
		})

		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			waitFor(t, "the follower to park", func() bool { return g.waiting() == 1 })
			cancel()
		}()
		start := time.Now()
		_, err = call(ctx, client, http.MethodGet, "test/resource")
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Errorf("returned after %v, want promptly", el)
		}
	})

	t.Run("deadline before the wait ends returns the limit at once", func(t *testing.T) {
		f := newFakeGitHub(t)
		s := newScript(secondary("60"))
		f.mux.Handle("/test/resource", s)
		rec := &sleepRecorder{}
		client := f.installationClient(t, f.config(rec), 1)

		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := call(ctx, client, http.MethodGet, "test/resource")
		var abuse *github.AbuseRateLimitError
		if !errors.As(err, &abuse) {
			t.Fatalf("err = %v, want the AbuseRateLimitError rather than a late context error", err)
		}
		if s.Calls() != 1 || len(rec.Waits()) != 0 {
			t.Errorf("calls %d, waits %v: want one call and no wait", s.Calls(), rec.Waits())
		}
	})
}

// TestBlockOutlivesItsLeader: a leader that gives up hands the block on; the
// next request sleeps what is left instead of going straight to the server.
func TestBlockOutlivesItsLeader(t *testing.T) {
	f := newFakeGitHub(t)
	s := newScript(secondary("60"), ok())
	f.mux.Handle("/test/resource", s)
	rec := &sleepRecorder{}
	cfg := f.config(rec)
	cfg.MaxRetries = -1 // the first request gives up at once
	cc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := cc.NewInstallationClient(1)
	// Another installation's client: go-github would refuse locally on the
	// first client until Retry-After passes, hiding what the gate does.
	second, _ := cc.NewInstallationClient(2)

	if _, err := call(context.Background(), first, http.MethodGet, "test/resource"); err == nil {
		t.Fatal("first request succeeded, want the rate-limit error")
	}
	if _, err := call(context.Background(), second, http.MethodGet, "test/resource"); err != nil {
		t.Fatalf("second request: %v", err)
	}
	if got := s.Calls(); got != 2 {
		t.Errorf("server saw %d requests, want 2", got)
	}
	waits := rec.Waits()
	if len(waits) != 1 || waits[0] < 55*time.Second || waits[0] > time.Minute {
		t.Errorf("waits = %v, want one wait for the rest of the 60 s block", waits)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
