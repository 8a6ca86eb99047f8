package bootstrap_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/agent/bootstrap"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// server remembers which agent token each bootstrap token was bound to.
type server struct {
	bound map[string]string
	calls int
	fail  error
	// failFirst makes the first calls fail, as a server that dies
	// mid-exchange and comes back.
	failFirst int
}

func (s *server) Exchange(_ context.Context, req protocol.ExchangeRequest) (protocol.ExchangeResponse, error) {
	s.calls++
	if s.fail != nil {
		return protocol.ExchangeResponse{}, s.fail
	}
	if s.calls <= s.failFirst {
		return protocol.ExchangeResponse{}, errors.New("exchange: read response: EOF")
	}
	if prev, ok := s.bound[req.BootstrapToken]; ok && prev != req.AgentToken {
		return protocol.ExchangeResponse{}, protocol.ErrTokenUsed
	}
	s.bound[req.BootstrapToken] = req.AgentToken
	return protocol.ExchangeResponse{AgentID: "a1", EnvironmentID: "e1"}, nil
}

func setup(t *testing.T) (bootstrap.Files, *server) {
	t.Helper()
	dir := t.TempDir()
	files := bootstrap.Files{
		BootstrapToken: filepath.Join(dir, "bootstrap-token"),
		AgentToken:     filepath.Join(dir, "state", "agent-token"),
	}
	if err := os.WriteFile(files.BootstrapToken, []byte("boot-123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return files, &server{bound: map[string]string{}}
}

func TestFirstStartExchangesAndStoresTheTokenPrivately(t *testing.T) {
	files, srv := setup(t)
	tok, err := bootstrap.Token(context.Background(), files, srv, protocol.AgentInfo{})
	if err != nil {
		t.Fatal(err)
	}
	if srv.bound["boot-123"] != tok || len(tok) != 64 {
		t.Fatalf("server bound %q, agent got %q", srv.bound["boot-123"], tok)
	}
	st, err := os.Stat(files.AgentToken)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("agent token mode %v, want 0600", st.Mode().Perm())
	}
	if dst, _ := os.Stat(filepath.Dir(files.AgentToken)); dst.Mode().Perm() != 0o700 {
		t.Fatalf("token directory mode %v, want 0700", dst.Mode().Perm())
	}
	if _, err := os.Stat(files.BootstrapToken); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("spent bootstrap token still on disk: %v", err)
	}
}

func TestRestartReusesTheStoredTokenWithoutExchanging(t *testing.T) {
	files, srv := setup(t)
	first, err := bootstrap.Token(context.Background(), files, srv, protocol.AgentInfo{})
	if err != nil {
		t.Fatal(err)
	}
	again, err := bootstrap.Token(context.Background(), files, srv, protocol.AgentInfo{})
	if err != nil {
		t.Fatal(err)
	}
	if again != first || srv.calls != 1 {
		t.Fatalf("restart got %q after %d exchanges, want %q after 1", again, srv.calls, first)
	}
}

func TestRetryAfterAFailedExchangeProposesTheSameToken(t *testing.T) {
	files, srv := setup(t)
	srv.fail = errors.New("tunnel dropped")
	if _, err := bootstrap.Token(context.Background(), files, srv, protocol.AgentInfo{}); err == nil {
		t.Fatal("exchange failure not reported")
	}
	// The server did bind the token before the reply was lost.
	pending, err := os.ReadFile(files.AgentToken + ".pending")
	if err != nil {
		t.Fatal(err)
	}
	srv.fail = nil
	srv.bound["boot-123"] = string(pending[:64])
	tok, err := bootstrap.Token(context.Background(), files, srv, protocol.AgentInfo{})
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if tok != string(pending[:64]) {
		t.Fatal("retry proposed a different token")
	}
}

func TestMissingTokensAreReportedByPath(t *testing.T) {
	files, srv := setup(t)
	os.Remove(files.BootstrapToken)
	_, err := bootstrap.Token(context.Background(), files, srv, protocol.AgentInfo{})
	if !errors.Is(err, bootstrap.ErrNoToken) {
		t.Fatalf("err = %v, want ErrNoToken", err)
	}
}

func TestUsedBootstrapTokenIsRefused(t *testing.T) {
	files, srv := setup(t)
	srv.bound["boot-123"] = "someone-else"
	_, err := bootstrap.Token(context.Background(), files, srv, protocol.AgentInfo{})
	if !errors.Is(err, protocol.ErrTokenUsed) {
		t.Fatalf("err = %v, want ErrTokenUsed", err)
	}
}

func TestTokenWithRetryOutlastsAServerThatComesBack(t *testing.T) {
	tests := []struct {
		name      string
		failFirst int
		bound     string // the bootstrap token already spent on this token
		wantCalls int
		wantErr   error
	}{
		{"the server dies twice mid-exchange", 2, "", 3, nil},
		{"a spent bootstrap token is not retried", 0, "someone-else", 1, protocol.ErrTokenUsed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files, srv := setup(t)
			srv.failFirst = tt.failFirst
			if tt.bound != "" {
				srv.bound["boot-123"] = tt.bound
			}
			var waits []time.Duration
			tok, err := bootstrap.TokenWithRetry(context.Background(), files, srv, protocol.AgentInfo{},
				func(attempt int) time.Duration { return time.Duration(attempt) * time.Millisecond },
				func(_ error, wait time.Duration) { waits = append(waits, wait) })
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if srv.calls != tt.wantCalls || len(waits) != tt.failFirst {
				t.Fatalf("%d exchanges, %d waits; want %d and %d", srv.calls, len(waits), tt.wantCalls, tt.failFirst)
			}
			if err == nil && srv.bound["boot-123"] != tok {
				t.Fatalf("the server bound %q, the agent kept %q", srv.bound["boot-123"], tok)
			}
		})
	}
}

func TestTokenWithRetryStopsWithItsContext(t *testing.T) {
	files, srv := setup(t)
	srv.fail = errors.New("tunnel dropped")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := bootstrap.TokenWithRetry(ctx, files, srv, protocol.AgentInfo{},
		func(int) time.Duration { return 10 * time.Millisecond }, nil)
	if !errors.Is(err, context.DeadlineExceeded) || srv.calls < 2 {
		t.Fatalf("err = %v after %d exchanges; want retries, then the context's deadline", err, srv.calls)
	}
}
