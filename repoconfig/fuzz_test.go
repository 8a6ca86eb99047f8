package repoconfig

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// FuzzParse checks that Parse never panics, that it always returns exactly
// one of a config or a well-formed *ParseError, and that any config it
// accepts survives a trip through MarshalYAML.
func FuzzParse(f *testing.F) {
	f.Add(readmeExample(f))
	files, _ := filepath.Glob(filepath.Join("testdata", "golden", "*.yml"))
	for _, name := range files {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b)
		}
	}
	for _, s := range []string{
		"",
		"version: 1\npreviews: [{name: web, service: app, port: 80}]\n",
		"version: 1\nx-b: &b {service: app, port: 80}\npreviews:\n  - <<: *b\n    name: web\nenv: &e {A: 1}\nsecrets: [B]\n",
		"version: 1\nenv: &e\n  A: x\n  <<: *e\n",
		"version: 1\nx-a: &a {A: a}\nx-b: &b {<<: [*a, *a, *a]}\nenv: {<<: [*b, *b]}\n",
		"version: 1\nttl: 3d\nhealth: {path: /h, timeout: 1s, expect_status: 200}\n",
		"version: 1\ncompose: [../a, /b, -c, d/, ./e, e]\n",
		"[1, 2",
		"a: *nope\n",
		"version: 1\n---\nversion: 1\n",
		"\ufeffversion: 1\n",
		"version: !!int x\nttl: !!str 3h\nport: !custom 1\n",
		"? [a]\n: b\n",
		"version: 1\nprevious: 1\n\t- x\n",
		"version: 0x1\nprevious: {a: 1\n",
		"version: 1\nsecrets: {A: b}\nenv: [A]\n",
		strings.Repeat("[", 200),
	} {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err == nil {
			if cfg == nil {
				t.Fatal("nil config and nil error")
			}
			checkValid(t, cfg)
			out, merr := yaml.Marshal(cfg)
			if merr != nil {
				t.Fatalf("Marshal of a parsed config: %v", merr)
			}
			again, perr := Parse(out)
			if perr != nil {
				t.Fatalf("Parse(Marshal(config)) failed: %v\ninput %q\nyaml %q", perr, data, out)
			}
			if !reflect.DeepEqual(again, cfg) {
				t.Fatalf("round trip changed the config\nbefore %+v\nafter  %+v", cfg, again)
			}
			return
		}
		if cfg != nil {
			t.Fatal("config returned with an error")
		}
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Fatalf("error %T is not a *ParseError: %v", err, err)
		}
		if len(pe.Errs) == 0 || pe.Error() == "" {
			t.Fatal("ParseError without problems")
		}
		for i, e := range pe.Errs {
			if e.Msg == "" {
				t.Fatalf("problem %d has no message", i)
			}
			if strings.HasPrefix(e.Msg, "internal error") {
				t.Fatalf("recovered panic: %v", e.Msg)
			}
			if e.Line < 0 || e.Column < 0 {
				t.Fatalf("negative position: %+v", e)
			}
			if i > 0 && (pe.Errs[i-1].Line > e.Line || pe.Errs[i-1].Line == e.Line && pe.Errs[i-1].Column > e.Column) {
				t.Fatalf("problems not sorted: %+v before %+v", pe.Errs[i-1], e)
			}
		}
	})
}

// checkValid asserts the invariants every accepted config holds.
func checkValid(t *testing.T, c *Config) {
	t.Helper()
	if c.Version != 1 {
		t.Fatalf("version %d", c.Version)
	}
	if len(c.Previews) < 1 || len(c.Previews) > maxPreviews {
		t.Fatalf("%d previews", len(c.Previews))
	}
	names := map[string]bool{}
	for _, p := range c.Previews {
		if checkPreviewName(p.Name) != "" || names[p.Name] || p.Service == "" || p.Port < 1 || p.Port > 65535 || checkURLPath(p.Path) != "" {
			t.Fatalf("invalid preview accepted: %+v", p)
		}
		names[p.Name] = true
	}
	if len(c.Compose) == 0 {
		t.Fatal("no compose file")
	}
	for _, p := range c.Compose {
		if clean, problem := cleanComposePath(p); problem != "" || clean != p {
			t.Fatalf("compose path %q accepted: %s", p, problem)
		}
	}
	if c.TTL != 0 && (c.TTL < minTTL || c.TTL > maxTTL) {
		t.Fatalf("ttl %v", c.TTL)
	}
	if c.Health.Timeout <= 0 || c.Health.Interval <= 0 || c.Health.Interval > c.Health.Timeout || c.Build.Timeout <= 0 {
		t.Fatalf("durations %+v %+v", c.Health, c.Build)
	}
	for k := range c.Env {
		if checkVarName(k) != "" {
			t.Fatalf("env name %q accepted", k)
		}
	}
	for _, s := range c.Secrets {
		if _, ok := c.Env[s]; ok || checkVarName(s) != "" {
			t.Fatalf("secret %q accepted", s)
		}
	}
}
