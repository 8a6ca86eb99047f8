// Package health runs a deployment's health check against a service's
// address on the compose network: an HTTP GET of a path expecting a status,
// or a TCP connect when no path is set, retried until it passes or its
// timeout ends.
//
// It is not Docker's HEALTHCHECK (Compose's --wait honours those) and it
// does not find the address (package containers does).
package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/stagely-dev/stagely/agent/protocol"
)

// Defaults for a Health with zero fields.
const (
	DefaultTimeout  = 5 * time.Minute
	DefaultInterval = 2 * time.Second
	// attemptTimeout bounds one try.
	attemptTimeout = 5 * time.Second
)

// ErrUnhealthy: the check did not pass before its timeout.
var ErrUnhealthy = errors.New("health check failed")

// Check tries h against addr (host:port) until it passes, its timeout ends
// or ctx ends. The error says what the last attempt saw.
func Check(ctx context.Context, addr string, h protocol.Health) error {
	timeout, interval := time.Duration(h.Timeout), time.Duration(h.Interval)
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if interval <= 0 {
		interval = DefaultInterval
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// One client for all attempts, with no proxy and no keep-alive: each
	// attempt proves the service accepts a fresh connection.
	client := &http.Client{
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	var last error
	for attempt := 1; ; attempt++ {
		err := once(ctx, client, addr, h)
		if err == nil {
			return nil
		}
		// An attempt cut short by the overall timeout says less than the
		// one before it.
		if last == nil || ctx.Err() == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w after %d attempts over %v: %v", ErrUnhealthy, attempt, timeout, last)
		case <-time.After(interval):
		}
	}
}

func once(ctx context.Context, client *http.Client, addr string, h protocol.Health) error {
	ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	if h.Path == "" {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("connect %s: %w", addr, err)
		}
		return c.Close()
	}
	url := "http://" + addr + h.Path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	req.Header.Set("User-Agent", "stagely-agent health check")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", h.Path, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if !healthy(h, resp.StatusCode) {
		want := "2xx or 3xx"
		if h.ExpectStatus != 0 {
			want = fmt.Sprint(h.ExpectStatus)
		}
		return fmt.Errorf("GET %s: status %d, want %s", h.Path, resp.StatusCode, want)
	}
	return nil
}

func healthy(h protocol.Health, status int) bool {
	if h.ExpectStatus != 0 {
		return status == h.ExpectStatus
	}
	return status >= 200 && status < 400
}
