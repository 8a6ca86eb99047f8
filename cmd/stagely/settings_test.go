package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/store/storetest"
)

// appKeyPEM is a GitHub App key the server accepts, made once: RSA keys
// take a while to generate under -race.
var appKeyPEM = sync.OnceValue(func() string {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}))
})

func ecKeyPEM(t *testing.T) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
}

// A wrong setting is refused before the server touches its database (an
// address nothing answers on, in refusedStart), naming the setting, and
// the refusal carries no secret of the settings.
func TestServerChecksItsSettingsBeforeTheDatabase(t *testing.T) {
	dir := t.TempDir()
	const valkeyPassword = "valkey-password-1d8e"
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"a key file that is not PEM", []string{"--app-key", "", "--app-key-file", writeTestFile(t, dir, "app.pem", "not a key\n")},
			[]string{"--app-key-file (STAGELY_APP_KEY_FILE)", "RSA"}},
		{"a key file with an EC key", []string{"--app-key", "", "--app-key-file", writeTestFile(t, dir, "ec.pem", ecKeyPEM(t))},
			[]string{"--app-key-file (STAGELY_APP_KEY_FILE)", "RSA"}},
		{"a key that is not PEM", []string{"--app-key", "-----BEGIN RSA PRIVATE KEY-----\nAAAA"},
			[]string{"--app-key (STAGELY_APP_KEY)", "RSA"}},
		{"both a key and a key file", []string{"--app-key-file", filepath.Join(dir, "old.pem")},
			[]string{"--app-key (STAGELY_APP_KEY)", "--app-key-file (STAGELY_APP_KEY_FILE)"}},
		{"an app id below 1", []string{"--app-id", "-5"}, []string{"--app-id (STAGELY_APP_ID)"}},
		{"stuck after less than the reaper allows", []string{"--stuck-after", "30s"}, []string{"--stuck-after (STAGELY_STUCK_AFTER)"}},
		{"a negative orphan grace", []string{"--orphan-grace", "-10m"}, []string{"--orphan-grace (STAGELY_ORPHAN_GRACE)"}},
		// Only 0 turns the reaper off: a negative interval left it off
		// without a word, and idle previews and orphans ran on, billed.
		{"a negative reap interval", []string{"--reap-interval", "-1m"}, []string{"--reap-interval (STAGELY_REAP_INTERVAL)"}},
		{"a malformed Valkey URL", []string{"--valkey-url", "redis://:" + valkeyPassword + "@127.0.0.1:1/0%zz"},
			[]string{"--valkey-url (STAGELY_VALKEY_URL)"}},
		{"a preview domain that is a URL", []string{"--provider", "local", "--preview-domain", "https://preview.example.com"},
			[]string{"--preview-domain (STAGELY_PREVIEW_DOMAIN)", "https://preview.example.com"}},
		{"no preview domain", []string{"--provider", "local", "--preview-domain", ""},
			[]string{"--preview-domain (STAGELY_PREVIEW_DOMAIN)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("STAGELY_VALKEY_URL", "")
			t.Setenv("STAGELY_PREVIEW_DOMAIN", "")
			err := refusedStart(t, tt.args, tt.want)
			if msg := err.Error(); strings.Contains(msg, "connect to postgres") || strings.Contains(msg, valkeyPassword) {
				t.Errorf("refusal %q: want the setting named, before Postgres, without its secrets", msg)
			}
		})
	}
}

// A preview domain the proxy cannot serve is refused before it is
// recorded as the domain of the shared route table: recorded, it would
// make every later start, with the domain put right, refuse as differing
// from the other nodes.
func TestProxyRefusesABadPreviewDomainWithoutRecordingIt(t *testing.T) {
	clearProxyEnv(t)
	dir := t.TempDir()
	prefix := fmt.Sprintf("test:%d:route:", time.Now().UnixNano())
	base := []string{"proxy", "--routes", writeTestFile(t, dir, "routes", "a.preview.example.com 0123456789abcdef0123\n"),
		"--dev-ca-file", filepath.Join(dir, "ca.pem"), "--valkey-url", valkeyURL(),
		"--valkey-prefix", prefix,
		"--http-addr", "127.0.0.1:0", "--tunnel-addr", "127.0.0.1:0"}
	t.Cleanup(func() {
		c := valkeyClient(t)
		c.Do(context.Background(), c.B().Del().Key(prefix+"setting:preview-domain").Build())
	})
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := run(ctx, append(base, "--preview-domain", "https://preview.example.com"), &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "--preview-domain (STAGELY_PREVIEW_DOMAIN)") {
		t.Errorf("proxy with a URL for its domain: %v; want it refused, naming --preview-domain (STAGELY_PREVIEW_DOMAIN)", err)
	}
	// Put right, the proxy starts, and stops at the end of its context.
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := run(ctx, append(base, "--preview-domain", "preview.example.com"), &out, &errb); err != nil {
		t.Fatalf("proxy with the domain put right: %v", err)
	}
}

// Flag parsing stops at the first argument that is not a flag: a stray
// word (the second word of a value that was not quoted) is refused,
// naming it, instead of every setting after it being dropped unread.
func TestStrayArgumentsAreRefused(t *testing.T) {
	clearProxyEnv(t)
	t.Run("server", func(t *testing.T) {
		refusedStart(t, []string{"--lease", "30s", "s", "--provider", "nonesuch"}, []string{`"s"`})
	})
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
	}{
		{"migrate", []string{"migrate", "--database-url", "postgres://nobody@127.0.0.1:1/none", "s"}},
		{"proxy", []string{"proxy", "--routes", writeTestFile(t, dir, "routes", ""), "--dev-ca-file", filepath.Join(dir, "ca.pem"),
			"--http-addr", "127.0.0.1:0", "--tunnel-addr", "127.0.0.1:0", "--drain-timeout", "30s", "s", "--tls-mode", "nonesuch"}},
		{"agent", []string{"agent", "--expose", "a.example.com=127.0.0.1:1", "--proxy", "127.0.0.1:1", "s", "--token", "0123456789abcdef"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if err := run(ctx, tt.args, &out, &errb); err == nil || !strings.Contains(err.Error(), `"s"`) {
				t.Errorf("stagely %s with a stray argument: %v; want it refused, naming it", tt.name, err)
			}
		})
	}
}

// A listen address already taken is refused naming its setting.
func TestServerNamesTheSettingOfAPortInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, k := range []string{"VALKEY_URL", "PROVIDER", "BOT_LOGIN", "ADDR"} {
		t.Setenv("STAGELY_"+k, "")
	}
	args := []string{"server", "--database-url", storetest.NewURL(t), "--app-id", "1", "--app-key", appKeyPEM(),
		"--webhook-secret", "0123456789abcdef", "--bot-login", "stagely[bot]", "--addr", taken.Addr().String()}
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = run(ctx, args, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "--addr (STAGELY_ADDR)") {
		t.Errorf("server on a taken port: %v; want it refused, naming --addr (STAGELY_ADDR)", err)
	}
}
