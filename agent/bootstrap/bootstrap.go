// Package bootstrap gives the agent its long-lived agent token: read from
// its file on every start after the first, and on the first start obtained
// by exchanging the one-time bootstrap token that cloud-init wrote.
//
// The agent proposes the agent token itself and writes it (mode 0600)
// before the exchange, so a crash at any point is recovered by retrying the
// same exchange; see ExchangeRequest in package protocol.
//
// It is not the transport: the exchange goes through an Exchanger, which
// protocol.Client implements.
package bootstrap

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/stagely-dev/stagely/agent/protocol"
	"github.com/stagely-dev/stagely/tunnel"
)

// Exchanger trades a bootstrap token for an agent token.
type Exchanger interface {
	Exchange(ctx context.Context, req protocol.ExchangeRequest) (protocol.ExchangeResponse, error)
}

// Files names the agent's token files.
type Files struct {
	// BootstrapToken is the one-time token's file, written by cloud-init.
	// It is removed once exchanged.
	BootstrapToken string
	// AgentToken is where the agent token is kept (mode 0600, its
	// directory 0700). A sibling file with the suffix ".pending" holds a
	// proposed token until the server accepts it.
	AgentToken string
}

// ErrNoToken: neither an agent token nor a bootstrap token is on disk.
var ErrNoToken = errors.New("no agent token and no bootstrap token")

// Token returns the agent token: the stored one if there is one, else the
// result of exchanging the bootstrap token through ex.
func Token(ctx context.Context, files Files, ex Exchanger, info protocol.AgentInfo) (string, error) {
	if tok, err := readToken(files.AgentToken); err == nil {
		return tok, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("bootstrap: read agent token: %w", err)
	}

	boot, err := readToken(files.BootstrapToken)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("bootstrap: %w (looked for %s and %s)", ErrNoToken, files.AgentToken, files.BootstrapToken)
	}
	if err != nil {
		return "", fmt.Errorf("bootstrap: read bootstrap token: %w", err)
	}

	pending := files.AgentToken + ".pending"
	tok, err := readToken(pending)
	if errors.Is(err, fs.ErrNotExist) {
		tok, err = newToken()
		if err == nil {
			err = writeSecret(pending, tok)
		}
	}
	if err != nil {
		return "", fmt.Errorf("bootstrap: propose agent token: %w", err)
	}

	if _, err := ex.Exchange(ctx, protocol.ExchangeRequest{BootstrapToken: boot, AgentToken: tok, Agent: info}); err != nil {
		return "", fmt.Errorf("bootstrap: exchange bootstrap token: %w", err)
	}
	if err := os.Rename(pending, files.AgentToken); err != nil {
		return "", fmt.Errorf("bootstrap: store agent token: %w", err)
	}
	if err := os.Remove(files.BootstrapToken); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("bootstrap: remove spent bootstrap token: %w", err)
	}
	return tok, nil
}

// TokenWithRetry is Token, tried again after delay(attempt) whenever it
// fails in a way a retry can mend (the tunnel or the server gone in the
// middle of the exchange), until ctx ends. Retrying is safe: the proposed
// token is kept on disk, so every attempt proposes the same one. onRetry,
// if set, hears each failure and the wait before the next attempt.
func TokenWithRetry(ctx context.Context, files Files, ex Exchanger, info protocol.AgentInfo,
	delay func(attempt int) time.Duration, onRetry func(err error, wait time.Duration)) (string, error) {
	for attempt := 0; ; attempt++ {
		tok, err := Token(ctx, files, ex, info)
		// No token to exchange, one spent on another agent token, or one
		// the proxy refuses for good (its machine was destroyed): no retry
		// mends those.
		if err == nil || errors.Is(err, ErrNoToken) || errors.Is(err, protocol.ErrTokenUsed) || errors.Is(err, tunnel.ErrRefused) {
			return tok, err
		}
		wait := delay(attempt)
		if onRetry != nil {
			onRetry(err, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", fmt.Errorf("%w (gave up: %w)", err, ctx.Err())
		case <-t.C:
		}
	}
}

func newToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// readToken reads a token file; an empty file counts as missing.
func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%s is empty: %w", path, fs.ErrNotExist)
	}
	return tok, nil
}

// writeSecret writes a token durably with mode 0600 in a 0700 directory:
// a temporary file, synced, then renamed into place.
func writeSecret(path, tok string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".token-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.WriteString(tok + "\n"); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
