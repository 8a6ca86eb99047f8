package repoconfig

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// readmeExample returns the YAML block under "## Full example" in
// README.md, so the documented example is the tested one.
func readmeExample(t testing.TB) []byte {
	return []byte(readmeBlock(t, "## Full example", "yaml", 0))
}

// readmeBlock returns the first fenced block of the given language after
// the heading, in README.md.
func readmeBlock(t testing.TB, heading, lang string, skip int) string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), heading)
	if !ok {
		t.Fatalf("README.md has no %q section", heading)
	}
	for i := 0; i <= skip; i++ {
		if _, rest, ok = strings.Cut(rest, "```"+lang+"\n"); !ok {
			t.Fatalf("no %s block in README section %q", lang, heading)
		}
	}
	block, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("unterminated block in README.md")
	}
	return block
}

func TestREADMEErrorExample(t *testing.T) {
	in := readmeBlock(t, "## Errors", "yaml", 0)
	want := readmeBlock(t, "## Errors", "text", 0)
	_, err := Parse([]byte(in))
	if err == nil {
		t.Fatal("the README's broken example parses")
	}
	if got := err.Error() + "\n"; got != want {
		t.Errorf("README's error example is stale:\n got %s\nwant %s", got, want)
	}
	if strings.Contains(err.Error(), "sk_test_123") {
		t.Error("a secret value was echoed")
	}
}

func TestParseErrorsNeverEchoSecretValues(t *testing.T) {
	for _, in := range []string{
		"version: 1\nsecrets:\n  API_KEY: hunter2\n",
		"version: 1\nsecrets:\n  - API_KEY=hunter2\n",
		"version: 1\nsecrets:\n  - API_KEY: hunter2\n",
		"version: 1\nsecrets:\n  - hunter2 hunter2\n",
		"version: 1\nsecrets: hunter2\n",
		"version: 1\nsecrets: [[hunter2]]\n",
	} {
		_, err := Parse([]byte(in))
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Parse(%q) = %v", in, err)
		}
	}
}

func fullExampleConfig() *Config {
	return &Config{
		Version: 1,
		Compose: []string{"compose.yaml", "deploy/compose.preview.yaml"},
		Previews: []Preview{
			{Name: "web", Service: "frontend", Port: 3000, Path: "/welcome"},
			{Name: "api", Service: "backend", Port: 8080, Path: "/"},
		},
		Health:   Health{Path: "/healthz", Timeout: 10 * time.Minute, Interval: 5 * time.Second, ExpectStatus: 200},
		Provider: Provider{Name: "hetzner", Size: "cx32", Region: "fsn1", Image: "ubuntu-24.04"},
		TTL:      72 * time.Hour,
		Env:      map[string]string{"LOG_LEVEL": "debug", "FEATURE_FLAGS": "checkout,search", "WORKERS": "4"},
		Secrets:  []string{"STRIPE_TEST_KEY", "SENTRY_DSN"},
		Build:    Build{Timeout: 45 * time.Minute},
	}
}

func TestParseFullExampleFromREADME(t *testing.T) {
	got, err := Parse(readmeExample(t))
	if err != nil {
		t.Fatalf("Parse(README example): %v", err)
	}
	if want := fullExampleConfig(); !reflect.DeepEqual(got, want) {
		t.Errorf("Parse(README example)\n got %+v\nwant %+v", got, want)
	}
}

func TestParseMinimalFillsFileDefaults(t *testing.T) {
	got, err := Parse([]byte("version: 1\npreviews:\n  - name: web\n    service: app\n    port: 3000\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Version:  1,
		Compose:  []string{"compose.yaml"},
		Previews: []Preview{{Name: "web", Service: "app", Port: 3000, Path: "/"}},
		Health:   Health{Timeout: 5 * time.Minute, Interval: 2 * time.Second},
		Build:    Build{Timeout: 30 * time.Minute},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

func TestParseAccepts(t *testing.T) {
	const previews = "previews:\n  - name: web\n    service: app\n    port: 3000\n"
	tests := []struct {
		name  string
		input string
		check func(*Config) error
	}{
		{"compose as one string, cleaned", "version: 1\ncompose: ./deploy/../compose.prod.yml\n" + previews,
			func(c *Config) error { return eq(c.Compose, []string{"compose.prod.yml"}) }},
		{"ttl in days", "version: 1\nttl: 3d\n" + previews,
			func(c *Config) error { return eq(c.TTL, 72*time.Hour) }},
		{"ttl compound", "version: 1\nttl: 1h30m\n" + previews,
			func(c *Config) error { return eq(c.TTL, 90*time.Minute) }},
		{"null values are absent", "version: 1\nhealth:\nprovider: ~\nttl:\nenv:\nsecrets:\nbuild:\ncompose:\n" + previews,
			func(c *Config) error {
				return errors.Join(eq(c.Provider, Provider{}), eq(c.TTL, time.Duration(0)),
					eq(c.Compose, []string{"compose.yaml"}), eq(c.Health.Timeout, 5*time.Minute))
			}},
		{"env scalars kept as written", "version: 1\nenv:\n  A: 8080\n  B: true\n  C: 0x10\n  D:\n  E: 'x y'\n" + previews,
			func(c *Config) error {
				return eq(c.Env, map[string]string{"A": "8080", "B": "true", "C": "0x10", "D": "", "E": "x y"})
			}},
		{"x- keys hold anchors", "version: 1\nx-base: &base {service: app, port: 3000}\npreviews:\n  - <<: *base\n    name: web\n  - {<<: *base, name: admin, path: /admin}\n",
			func(c *Config) error {
				return eq(c.Previews, []Preview{
					{Name: "web", Service: "app", Port: 3000, Path: "/"},
					{Name: "admin", Service: "app", Port: 3000, Path: "/admin"},
				})
			}},
		{"merge list: earlier wins, own keys win", "version: 1\nx-a: &a {service: a, port: 1}\nx-b: &b {service: b, port: 2, path: /b}\npreviews:\n  - <<: [*a, *b]\n    name: web\n    port: 3\n",
			func(c *Config) error {
				return eq(c.Previews, []Preview{{Name: "web", Service: "a", Port: 3, Path: "/b"}})
			}},
		{"aliased scalars", "version: 1\nx-port: &p 3000\npreviews:\n  - {name: web, service: app, port: *p}\n",
			func(c *Config) error { return eq(c.Previews[0].Port, 3000) }},
		{"interval shrinks to a short timeout", "version: 1\nhealth: {timeout: 1s}\n" + previews,
			func(c *Config) error { return eq(c.Health.Interval, time.Second) }},
		{"int forms", "version: 1\npreviews:\n  - {name: web, service: app, port: 0x1F90}\n",
			func(c *Config) error { return eq(c.Previews[0].Port, 8080) }},
		{"bounds inclusive", "version: 1\nttl: 10m\nbuild: {timeout: 3h}\nhealth: {path: /h, timeout: 1h, interval: 1h, expect_status: 599}\npreviews:\n  - {name: a, service: b, port: 65535}\n",
			func(c *Config) error {
				return errors.Join(eq(c.TTL, 10*time.Minute), eq(c.Build.Timeout, 3*time.Hour), eq(c.Health.Interval, time.Hour))
			}},
		{"utf-8 BOM", "\ufeffversion: 1\n" + previews, func(c *Config) error { return nil }},
		{"explicit document markers", "---\nversion: 1\n" + previews + "...\n", func(c *Config) error { return nil }},
		{"provider without size", "version: 1\nprovider: {name: local}\n" + previews,
			func(c *Config) error { return eq(c.Provider, Provider{Name: "local"}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.input))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if err := tt.check(c); err != nil {
				t.Error(err)
			}
		})
	}
}

func eq[T any](got, want T) error {
	if !reflect.DeepEqual(got, want) {
		return fmt.Errorf("got %#v, want %#v", got, want)
	}
	return nil
}

// TestParseRejects: each case lists every problem, rendered, so the exact
// line numbers and messages are asserted.
func TestParseRejects(t *testing.T) {
	const previews = "previews:\n  - name: web\n    service: app\n    port: 3000\n"
	tests := []struct {
		name  string
		input string
		want  []string
	}{
		{"unknown top-level key with suggestion",
			"version: 1\n" + previews + "previewz: []\n",
			[]string{`line 6: unknown key "previewz" (did you mean "previews"?)`}},
		{"unknown key without suggestion",
			"version: 1\n" + previews + "banana: 1\n",
			[]string{`line 6: unknown key "banana" (expected one of: version, compose, previews, health, provider, ttl, env, secrets, build)`}},
		{"suggestion ignores case and dashes",
			"version: 1\n" + previews + "TTL: 3h\nhealth:\n  expect-status: 200\n",
			[]string{
				`line 6: unknown key "TTL" (did you mean "ttl"?)`,
				`line 8: health: unknown key "expect-status" (did you mean "expect_status"?)`,
			}},
		{"transposed letters", "version: 1\n" + previews + "helaht: {}\n" + "ecnv: {}\n",
			[]string{
				`line 6: unknown key "helaht" (did you mean "health"?)`,
				`line 7: unknown key "ecnv" (did you mean "env"?)`,
			}},
		{"nested unknown key",
			"version: 1\npreviews:\n  - name: web\n    service: app\n    prot: 3000\n",
			[]string{
				`line 3: previews[0].port: required: the port the service listens on inside its container`,
				`line 5: previews[0]: unknown key "prot" (did you mean "port"?)`,
			}},
		{"port out of range",
			"version: 1\npreviews:\n  - name: web\n    service: app\n    port: 70000\n",
			[]string{`line 5: previews[0].port: must be between 1 and 65535`}},
		{"port zero", "version: 1\npreviews: [{name: web, service: app, port: 0}]\n",
			[]string{`line 2: previews[0].port: must be between 1 and 65535`}},
		{"port as quoted string",
			"version: 1\npreviews:\n  - name: web\n    service: app\n    port: \"80\"\n",
			[]string{`line 5: previews[0].port: must be a whole number, got "80" (remove the quotes)`}},
		{"port as float", "version: 1\npreviews: [{name: web, service: app, port: 80.5}]\n",
			[]string{`line 2: previews[0].port: must be a whole number, got 80.5`}},
		{"version missing", previews,
			[]string{`line 1: version: required: put "version: 1" at the top of the file`}},
		{"version unsupported hides the rest", "version: 2\nfoo: bar\n",
			[]string{`line 1: version: unsupported version 2; this Stagely reads version 1`}},
		{"version as string", "version: \"1\"\n" + previews,
			[]string{`line 1: version: must be a whole number, got "1" (remove the quotes)`}},
		{"previews missing", "version: 1\n",
			[]string{`line 1: previews: required: list at least one preview, with its name, service and port`}},
		{"previews empty", "version: 1\npreviews: []\n",
			[]string{`line 2: previews: must list at least one preview, with its name, service and port`}},
		{"previews not a list", "version: 1\npreviews:\n  web: {service: app}\n",
			[]string{`line 3: previews: must be a list, got a mapping`}},
		{"previews too many", "version: 1\npreviews:\n" + strings.Repeat("  - {name: a, service: b, port: 1}\n", 11),
			func() []string {
				out := []string{`line 3: previews: at most 10 previews, got 11`}
				for i := 1; i < 11; i++ {
					out = append(out, fmt.Sprintf(`line %d: previews[%d].name: "a" is used twice (first on line 3)`, i+3, i))
				}
				return out
			}()},
		{"preview item not a mapping", "version: 1\npreviews:\n  - web\n",
			[]string{`line 3: previews[0]: must be a mapping of keys, got "web"`}},
		{"preview all required missing", "version: 1\npreviews:\n  - path: /x\n",
			[]string{
				`line 3: previews[0].name: required: a short DNS-safe name like "web"`,
				`line 3: previews[0].service: required: the compose service to expose`,
				`line 3: previews[0].port: required: the port the service listens on inside its container`,
			}},
		{"preview names", "version: 1\npreviews:\n" +
			"  - {name: Web, service: a, port: 1}\n" +
			"  - {name: -web, service: a, port: 1}\n" +
			"  - {name: we--b, service: a, port: 1}\n" +
			"  - {name: abcdefghijabcdefghijabcdefghijk, service: a, port: 1}\n" +
			"  - {name: ok, service: a, port: 1}\n" +
			"  - {name: ok, service: a, port: 1}\n" +
			"  - {name: 7, service: a, port: 1}\n",
			[]string{
				`line 3: previews[0].name: "Web" must be lowercase: "web"`,
				`line 4: previews[1].name: "-web" must be lowercase letters, digits and '-', starting and ending with a letter or digit`,
				`line 5: previews[2].name: "we--b" must not contain "--"`,
				`line 6: previews[3].name: "abcdefghijabcdefghijabcdefghijk" is longer than 30 characters`,
				`line 8: previews[5].name: "ok" is used twice (first on line 7)`,
				`line 9: previews[6].name: must be a string, got 7 (put it in quotes: "7")`,
			}},
		{"service name", "version: 1\npreviews:\n  - {name: web, service: my app, port: 1}\n",
			[]string{`line 3: previews[0].service: "my app" is not a compose service name (letters, digits, '.', '_', '-')`}},
		{"preview paths", "version: 1\npreviews:\n" +
			"  - {name: a, service: a, port: 1, path: x}\n" +
			"  - {name: b, service: a, port: 1, path: //evil.example}\n" +
			"  - {name: c, service: a, port: 1, path: /a b}\n" +
			"  - {name: d, service: a, port: 1, path: '/x<![](https://evil.example/t.png)'}\n" +
			"  - {name: e, service: a, port: 1, path: /café}\n" +
			"  - {name: f, service: a, port: 1, path: '/app/#/board?tab=1&x=%2F'}\n",
			[]string{
				`line 3: previews[0].path: must start with "/", got "x"`,
				`line 4: previews[1].path: must not start with "//"`,
				`line 5: previews[2].path: must not contain spaces or control characters (escape them, like %20)`,
				`line 6: previews[3].path: must hold only the characters of a URL (escape '<' as %3C)`,
				`line 7: previews[4].path: must hold only the characters of a URL (escape 'é' as %C3%A9)`,
			}},
		{"compose paths", "version: 1\n" + previews + "compose:\n" +
			"  - ../outside.yml\n  - /etc/compose.yml\n  - '-'\n  - deploy/\n  - 'a\\b.yml'\n  - ./ok.yml\n  - ok.yml\n  - ''\n  - .\n",
			[]string{
				`line 7: compose[0]: must stay inside the repository`,
				`line 8: compose[1]: must be relative to the repository root, not absolute`,
				`line 9: compose[2]: must not start with "-"`,
				`line 10: compose[3]: must name a file, not a directory`,
				`line 11: compose[4]: use "/" between directories, not "\"`,
				`line 13: compose[6]: "ok.yml" is listed twice (first on line 12)`,
				`line 14: compose[7]: must not be empty`,
				`line 15: compose[8]: must name a file`,
			}},
		{"compose empty list", "version: 1\ncompose: []\n" + previews,
			[]string{`line 2: compose: must name at least one file; leave the key out for "compose.yaml"`}},
		{"compose wrong type", "version: 1\ncompose: {file: a.yml}\n" + previews,
			[]string{`line 2: compose: must be a string, got a mapping`}},
		{"health", "version: 1\n" + previews + "health:\n  path: healthz\n  timeout: 2h\n  interval: 0.5s\n  expect_status: 99\n",
			[]string{
				`line 7: health.path: must start with "/", got "healthz"`,
				`line 8: health.timeout: must be between 1s and 1h, got "2h"`,
				`line 9: health.interval: must be between 1s and 1h, got "0.5s"`,
				`line 10: health.expect_status: must be an HTTP status code, between 100 and 599`,
			}},
		{"health interval longer than timeout", "version: 1\n" + previews + "health: {path: /, timeout: 10s, interval: 20s}\n",
			[]string{`line 6: health.interval: must not be longer than health.timeout (10s)`}},
		{"expect_status needs path", "version: 1\n" + previews + "health: {expect_status: 204}\n",
			[]string{`line 6: health.expect_status: needs health.path: a status code needs an HTTP check`}},
		{"health not a mapping", "version: 1\n" + previews + "health: /healthz\n",
			[]string{`line 6: health: must be a mapping of keys, got "/healthz"`}},
		{"provider", "version: 1\n" + previews + "provider:\n  name: hetzer\n  size: 'big one'\n  region: [fsn1]\n",
			[]string{
				`line 7: provider.name: unknown provider "hetzer" (did you mean "hetzner"?)`,
				`line 8: provider.size: "big one" must be letters, digits and . _ : / - (at most 128)`,
				`line 9: provider.region: must be a string, got a list`,
			}},
		{"provider unknown name", "version: 1\n" + previews + "provider: {name: gcp}\n",
			[]string{`line 6: provider.name: unknown provider "gcp" (expected one of: local, aws, digitalocean, hetzner)`}},
		{"provider name missing", "version: 1\n" + previews + "provider:\n  size: cx22\n",
			[]string{`line 7: provider.name: required: one of local, aws, digitalocean, hetzner`}},
		{"ttl", "version: 1\n" + previews + "ttl: 72\n",
			[]string{`line 6: ttl: must be a duration with a unit, like "30m" or "72h", got 72`}},
		{"ttl too short", "version: 1\n" + previews + "ttl: 5m\n",
			[]string{`line 6: ttl: must be between 10m and 720h, got "5m"`}},
		{"ttl too long", "version: 1\n" + previews + "ttl: 31d\n",
			[]string{`line 6: ttl: must be between 10m and 720h, got "31d"`}},
		{"ttl negative", "version: 1\n" + previews + "ttl: -1h\n",
			[]string{`line 6: ttl: must be between 10m and 720h, got "-1h"`}},
		{"ttl garbage", "version: 1\n" + previews + "ttl: forever\n",
			[]string{`line 6: ttl: must be a duration like "30m" or "72h", got "forever"`}},
		{"ttl huge days", "version: 1\n" + previews + "ttl: 99999999999999999999d\n",
			[]string{`line 6: ttl: must be a duration like "30m" or "72h", got "99999999999999999999d"`}},
		{"build", "version: 1\n" + previews + "build:\n  timeout: 10s\n  cache: true\n",
			[]string{
				`line 7: build.timeout: must be between 1m and 3h, got "10s"`,
				`line 8: build: unknown key "cache" (expected one of: timeout)`,
			}},
		{"env", "version: 1\n" + previews + "env:\n  1X: a\n  STAGELY_URL: b\n  LIST: [1]\n  NUL: \"a\\0b\"\n  GOOD: ok\n",
			[]string{
				`line 7: env: "1X" is not a variable name: use letters, digits and '_', not starting with a digit`,
				`line 8: env: "STAGELY_URL" is reserved: names starting with STAGELY_ belong to Stagely`,
				`line 9: env.LIST: must be a string, got a list`,
				`line 10: env.NUL: must not contain a NUL character`,
			}},
		{"env not a mapping", "version: 1\n" + previews + "env:\n  - A=1\n",
			[]string{`line 7: env: must be a mapping of keys, got a list`}},
		{"secrets", "version: 1\n" + previews + "env: {SHARED: x}\nsecrets:\n  - API_KEY\n  - api-key\n  - API_KEY\n  - SHARED\n  - stagely_token\n  - 5\n",
			[]string{
				`line 9: secrets[1]: must be a secret's name: letters, digits and '_', not starting with a digit`,
				`line 10: secrets[2]: "API_KEY" is listed twice (first on line 8)`,
				`line 11: secrets[3]: "SHARED" is also set in env; a variable is either plain or secret`,
				`line 12: secrets[4]: "stagely_token" is reserved: names starting with STAGELY_ belong to Stagely`,
				`line 13: secrets[5]: must be a secret's name, got a number`,
			}},
		{"secret value pasted into the list is not echoed", "version: 1\n" + previews + "secrets:\n  - API_KEY=hunter2\n",
			[]string{`line 7: secrets[0]: must be a secret's name: letters, digits and '_', not starting with a digit; set the value in Stagely, never in this file`}},
		{"secrets with values", "version: 1\n" + previews + "secrets:\n  API_KEY: hunter2\n",
			[]string{`line 7: secrets: must be a list of secret names; set their values in Stagely, never in this file`}},
		{"duplicate keys", "version: 1\n" + previews + "ttl: 1h\nttl: 2h\n",
			[]string{`line 7: duplicate key "ttl" (first on line 6)`}},
		{"non-scalar key", "version: 1\n" + previews + "[a]: 1\n",
			[]string{`line 6: keys must be plain words, got a list`}},
		{"root not a mapping", "- version: 1\n",
			[]string{`line 1: the file must be a mapping of keys, like "version: 1", got a list`}},
		{"root scalar", "hello\n",
			[]string{`line 1: the file must be a mapping of keys, like "version: 1", got "hello"`}},
		{"two documents", "version: 1\n" + previews + "---\nversion: 1\n",
			[]string{`line 7: the file holds more than one YAML document; remove the "---" separator`}},
		{"self-merge", "version: 1\n" + previews + "env: &e\n  A: x\n  <<: *e\n",
			[]string{`line 8: env: a merge key (<<) refers to a mapping that contains it`}},
		{"merge of a scalar", "version: 1\n" + previews + "env:\n  <<: x\n",
			[]string{`line 7: env: a merge key (<<) takes a mapping or a list of mappings, got "x"`}},
		{"custom tag", "version: 1\n" + previews + "ttl: !secret 3h\n",
			[]string{`line 6: ttl: must be a string, got a value tagged !secret`}},
		{"all problems at once, sorted", "ttl: 1\npreviews:\n  - name: X\n    service: app\n    port: 0\nenvironment: {}\n",
			[]string{
				`line 1: version: required: put "version: 1" at the top of the file`,
				`line 1: ttl: must be a duration with a unit, like "30m" or "72h", got 1`,
				`line 3: previews[0].name: "X" must be lowercase: "x"`,
				`line 5: previews[0].port: must be between 1 and 65535`,
				`line 6: unknown key "environment" (expected one of: version, compose, previews, health, provider, ttl, env, secrets, build)`,
			}},

		// YAML syntax errors keep a line number.
		{"syntax: mapping in scalar", "version: 1\nttl: a: b\n",
			[]string{`line 2: invalid YAML: mapping values are not allowed in this context`}},
		{"syntax: bad indentation", "version: 1\npreviews:\n  - name: web\n   service: app\n",
			// yaml.v3 names the line where the list began.
			[]string{`line 3: invalid YAML: did not find expected '-' indicator`}},
		{"syntax: unclosed flow mapping", "version: 1\n" + previews + "health: {path: /\n",
			[]string{`line 6: invalid YAML: did not find expected ',' or '}'`}},
		{"syntax: unclosed flow on the only line", "[1, 2",
			[]string{`line 1: invalid YAML: did not find expected ',' or ']'`}},
		{"syntax: list item in mapping", "version: 1\nttl: 3h\n- x\n",
			[]string{`line 3: invalid YAML: did not find expected key`}},
		{"syntax: tab indentation", "version: 1\nprevious:\n\t- name: web\n",
			[]string{`line 3: invalid YAML: found character that cannot start any token`}},
		{"syntax: unknown anchor", "version: 1\n" + previews + "ttl: *nope\n",
			[]string{`line 6: invalid YAML: unknown anchor 'nope' referenced`}},
		{"syntax: control character", "version: 1\nttl: 3h\x01\n",
			[]string{`line 2: invalid YAML: control characters are not allowed`}},
		{"syntax: invalid UTF-8", "version: 1\n\nttl: \xff\n",
			[]string{`line 3: invalid YAML: invalid leading UTF-8 octet`}},

		// The file as a whole.
		{"empty", "", []string{`file is empty; it needs at least "version: 1" and one entry under "previews"`}},
		{"comments only", "# todo\n\n", []string{`file is empty; it needs at least "version: 1" and one entry under "previews"`}},
		{"null document", "~\n", []string{`file is empty; it needs at least "version: 1" and one entry under "previews"`}},
		{"too large", "version: 1\n#" + strings.Repeat("x", MaxFileSize),
			[]string{fmt.Sprintf("file is %d bytes; the limit is 65536 (64 KiB)", MaxFileSize+12)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.input))
			if c != nil {
				t.Errorf("Parse returned a config with an error: %+v", c)
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse error = %#v, want *ParseError", err)
			}
			var got []string
			for _, e := range pe.Errs {
				got = append(got, e.Error())
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("problems:\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(tt.want, "\n     "))
			}
		})
	}
}

func TestParseErrorColumns(t *testing.T) {
	_, err := Parse([]byte("version: 1\npreviews:\n  - name: web\n    service: app\n    port: 70000\n"))
	var pe *ParseError
	if !errors.As(err, &pe) || len(pe.Errs) != 1 {
		t.Fatalf("err = %v", err)
	}
	want := Error{Line: 5, Column: 11, Field: "previews[0].port", Msg: "must be between 1 and 65535"}
	if pe.Errs[0] != want {
		t.Errorf("got %#v, want %#v", pe.Errs[0], want)
	}
}

func TestParseRefusesBillionLaughs(t *testing.T) {
	// Each level merges the previous one nine times: 9^12 entries if
	// expanded.
	var b strings.Builder
	b.WriteString("version: 1\nx-l0: &l0 {A: a}\n")
	for i := 1; i <= 12; i++ {
		fmt.Fprintf(&b, "x-l%d: &l%d {<<: [%s]}\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*l%d, ", i-1), 9), ", "))
	}
	b.WriteString("env:\n  <<: *l12\n")
	start := time.Now()
	_, err := Parse([]byte(b.String()))
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Parse took %v", d)
	}
	var pe *ParseError
	if !errors.As(err, &pe) || len(pe.Errs) != 1 || !strings.Contains(pe.Errs[0].Msg, "expands to more than 100000 values") {
		t.Fatalf("err = %v, want the expansion limit alone", err)
	}
	if pe.Errs[0].Line == 0 {
		t.Error("expansion error has no line")
	}
}

func TestParseAliasedListsAreCheap(t *testing.T) {
	// Lists of aliases to lists are not flattened: each alias is one item.
	var b strings.Builder
	b.WriteString("version: 1\nprevious: []\nx-a: &a [A, A, A, A, A, A, A, A, A, A]\n")
	for i := 1; i <= 8; i++ {
		fmt.Fprintf(&b, "x-b%d: &b%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat("*a, ", 10), ", "))
	}
	b.WriteString("secrets: *b8\n")
	_, err := Parse([]byte(b.String()))
	var pe *ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("err = %v", err)
	}
	if n := len(pe.Errs); n > 20 {
		t.Errorf("%d problems, want a handful", n)
	}
}

func TestRoundTrip(t *testing.T) {
	inputs := map[string][]byte{
		"README example": readmeExample(t),
		"minimal":        []byte("version: 1\npreviews: [{name: web, service: app, port: 80}]\n"),
		"odd values": []byte("version: 1\nttl: 1h30m\ncompose: 'dir/my compose.yml'\n" +
			"previews: [{name: a-1, service: svc.x_y, port: 1, path: '/a?b=c#d'}]\n" +
			"env: {A: '', B: 'multi\nline', C: '#not a comment', D: 'yes', E: '0x10', F: null}\n" +
			"health: {timeout: 90s}\n"),
	}
	for name, in := range inputs {
		t.Run(name, func(t *testing.T) {
			want, err := Parse(in)
			if err != nil {
				t.Fatal(err)
			}
			out, err := yaml.Marshal(want)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Parse(out)
			if err != nil {
				t.Fatalf("Parse(Marshal(config)): %v\n%s", err, out)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("round trip changed the config\n got %+v\nwant %+v\nyaml:\n%s", got, want, out)
			}
		})
	}
}

func TestMarshalWritesShortDurations(t *testing.T) {
	out, err := yaml.Marshal(fullExampleConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ttl: 72h\n", "timeout: 10m\n", "interval: 5s\n", "timeout: 45m\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestDefaults(t *testing.T) {
	server := Defaults{
		Provider: Provider{Name: "aws", Size: "t3.medium", Region: "eu-central-1", Image: "ami-123"},
		TTL:      48 * time.Hour,
	}
	tests := []struct {
		name         string
		file         Provider
		fileTTL      time.Duration
		wantProvider Provider
		wantTTL      time.Duration
	}{
		{"file silent: server's provider and TTL", Provider{}, 0, server.Provider, 48 * time.Hour},
		{"same provider: server fills the gaps", Provider{Name: "aws", Size: "t3.large"}, 0,
			Provider{Name: "aws", Size: "t3.large", Region: "eu-central-1", Image: "ami-123"}, 48 * time.Hour},
		{"other provider: no server sizes", Provider{Name: "hetzner", Region: "fsn1"}, 0,
			Provider{Name: "hetzner", Region: "fsn1"}, 48 * time.Hour},
		{"file TTL kept", Provider{}, 2 * time.Hour, server.Provider, 2 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Config{Provider: tt.file, TTL: tt.fileTTL}
			c.Defaults(server)
			if c.Provider != tt.wantProvider || c.TTL != tt.wantTTL {
				t.Errorf("got %+v %v, want %+v %v", c.Provider, c.TTL, tt.wantProvider, tt.wantTTL)
			}
		})
	}
}

func TestDefaultsAfterParse(t *testing.T) {
	c, err := Parse([]byte("version: 1\nprovider: {name: digitalocean}\npreviews: [{name: web, service: app, port: 80}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	c.Defaults(Defaults{Provider: Provider{Name: "digitalocean", Size: "s-2vcpu-4gb", Region: "fra1"}, TTL: 72 * time.Hour})
	want := Provider{Name: "digitalocean", Size: "s-2vcpu-4gb", Region: "fra1"}
	if c.Provider != want || c.TTL != 72*time.Hour {
		t.Errorf("got %+v %v", c.Provider, c.TTL)
	}
}

func TestHealthy(t *testing.T) {
	any := Health{}
	only := Health{ExpectStatus: 204}
	for _, tt := range []struct {
		h      Health
		status int
		want   bool
	}{
		{any, 200, true}, {any, 302, true}, {any, 199, false}, {any, 404, false}, {any, 500, false},
		{only, 204, true}, {only, 200, false},
	} {
		if got := tt.h.Healthy(tt.status); got != tt.want {
			t.Errorf("%+v.Healthy(%d) = %v, want %v", tt.h, tt.status, got, tt.want)
		}
	}
}

func TestErrNotFoundIsNotAParseError(t *testing.T) {
	err := fmt.Errorf("load %s at abc123: %w", FileName, ErrNotFound)
	if !errors.Is(err, ErrNotFound) {
		t.Error("wrapped ErrNotFound not found by errors.Is")
	}
	var pe *ParseError
	if errors.As(err, &pe) {
		t.Error("ErrNotFound taken for a *ParseError")
	}
}

// TestPackageDocExampleParses keeps the example in the package comment
// valid.
func TestPackageDocExampleParses(t *testing.T) {
	b, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	var yml strings.Builder
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "//\t"); ok {
			yml.WriteString(rest + "\n")
		}
	}
	c, err := Parse([]byte(yml.String()))
	if err != nil {
		t.Fatalf("package doc example: %v\n%s", err, yml.String())
	}
	if len(c.Previews) != 2 || c.Provider.Name != "hetzner" || c.Env["FEATURE_X"] != "true" {
		t.Errorf("unexpected config %+v", c)
	}
}
