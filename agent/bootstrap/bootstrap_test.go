package bootstrap_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stagely-dev/stagely/agent/bootstrap"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// server remembers which agent token each bootstrap token was bound to.
type server struct {
	bound map[string]string
	calls int
	fail  error
}

func (s *server) Exchange(_ context.Context, req protocol.ExchangeRequest) (protocol.ExchangeResponse, error) {
	s.calls++
	if s.fail != nil {
		return protocol.ExchangeResponse{}, s.fail
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
