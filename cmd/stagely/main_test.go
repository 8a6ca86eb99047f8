package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/kv"
	"github.com/stagely-dev/stagely/store"
	"github.com/stagely-dev/stagely/store/storetest"
)

func TestServerRefusesToStartWithoutRequiredSettings(t *testing.T) {
	// Keep settings of the machine's environment out of the test.
	for _, k := range []string{"DATABASE_URL", "WEBHOOK_SECRET", "APP_ID", "APP_KEY_FILE", "APP_KEY"} {
		t.Setenv("STAGELY_"+k, "")
	}
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"nothing", nil, []string{"--database-url (STAGELY_DATABASE_URL)", "--webhook-secret (STAGELY_WEBHOOK_SECRET)", "--app-id (STAGELY_APP_ID)"}},
		{"no webhook secret", []string{"--database-url", "postgres://x", "--app-id", "1", "--app-key", "k"}, []string{"--webhook-secret (STAGELY_WEBHOOK_SECRET)"}},
		{"weak webhook secret", []string{"--database-url", "postgres://x", "--app-id", "1", "--app-key", "k", "--webhook-secret", "short"}, []string{"--webhook-secret", "too short"}},
		{"no key", []string{"--database-url", "postgres://x", "--app-id", "1", "--webhook-secret", "0123456789abcdef"}, []string{"--app-key-file (STAGELY_APP_KEY_FILE)"}},
		{"bad log level", []string{"--database-url", "postgres://x", "--app-id", "1", "--app-key", "k", "--webhook-secret", "0123456789abcdef", "--log-level", "loud"}, []string{"--log-level"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := run(ctx, append([]string{"server"}, c.args...), &out, &errb)
			if err == nil {
				t.Fatal("server started without required settings")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

func TestHelpListsEverySettingWithItsVariable(t *testing.T) {
	var out, errb bytes.Buffer
	_ = run(context.Background(), []string{"server", "--help"}, &out, &errb)
	help := errb.String() + out.String()
	for _, name := range []string{"addr", "database-url", "valkey-url", "webhook-secret", "github-url", "app-id", "app-key-file", "app-key", "workers", "lease", "poll", "log-level",
		"provider", "public-url", "tunnel-public-addr", "agent-binary", "machine-size", "machine-region", "machine-image", "cloud-endpoint",
		"https-addr", "tls-mode", "tls-cert-file", "acme-directory", "dns-provider", "cert-storage", "gc-percent"} {
		if !strings.Contains(help, "--"+name+", "+envName(name)) {
			t.Errorf("--help does not list --%s with %s", name, envName(name))
		}
	}
}

type downStore struct{ kv.Store }

func (downStore) Ping(context.Context) error { return errors.New("connection refused") }

func TestReadyzNamesWhatIsDown(t *testing.T) {
	url := storetest.NewURL(t)
	db, err := store.Open(context.Background(), url, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	gone, err := store.Open(context.Background(), url, 2)
	if err != nil {
		t.Fatal(err)
	}
	gone.Close() // as good as a Postgres that went away
	cases := []struct {
		name   string
		db     *bun.DB
		kv     kv.Store
		status int
		body   []string
	}{
		{"all up", db, kv.NewMemory(), http.StatusOK, []string{"ready"}},
		{"valkey down", db, downStore{kv.NewMemory()}, http.StatusServiceUnavailable, []string{"valkey does not answer"}},
		{"postgres down", gone, kv.NewMemory(), http.StatusServiceUnavailable, []string{"postgres does not answer"}},
		{"both down", gone, downStore{kv.NewMemory()}, http.StatusServiceUnavailable, []string{"postgres does not answer", "valkey does not answer"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var logs bytes.Buffer
			w := httptest.NewRecorder()
			readyz(c.db, c.kv, zerolog.New(&logs))(w, httptest.NewRequest("GET", "/readyz", nil))
			if w.Code != c.status {
				t.Errorf("readyz = %d %q, want %d", w.Code, w.Body, c.status)
			}
			for _, b := range c.body {
				if !strings.Contains(w.Body.String(), b) {
					t.Errorf("readyz says %q, want it to name %q", w.Body, b)
				}
			}
			// The port is public: why is for the log, not for anyone who
			// asks.
			if strings.Contains(w.Body.String(), "connection refused") || strings.Contains(w.Body.String(), "closed") {
				t.Errorf("readyz tells the public the driver's error: %q", w.Body)
			}
			if c.status != http.StatusOK && !strings.Contains(logs.String(), "does not answer") {
				t.Errorf("readyz logged nothing of why: %q", logs.String())
			}
		})
	}
}
