package repoconfig

import (
	"fmt"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// The keys each mapping of the format allows, in the order the README
// documents them.
var (
	rootKeys     = []string{"version", "compose", "previews", "health", "provider", "ttl", "env", "secrets", "build"}
	previewKeys  = []string{"name", "service", "port", "path"}
	healthKeys   = []string{"path", "timeout", "interval", "expect_status"}
	providerKeys = []string{"name", "size", "region", "image"}
	buildKeys    = []string{"timeout"}
)

var (
	// previewName is a DNS label, lowercase, short enough to combine with
	// an environment's hash into one label.
	previewName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	// serviceName is what docker compose accepts as a service name.
	serviceName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)
	// envName is a POSIX shell variable name.
	envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// providerToken covers sizes, regions and images of every provider.
	providerToken = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$`)
)

// config decodes the root mapping.
func (d *decoder) config(root *yaml.Node) *Config {
	r := resolve(root)
	if r.Kind != yaml.MappingNode {
		d.errorf(root, "", "the file must be a mapping of keys, like \"version: 1\", got %s", describe(r))
		return nil
	}
	o, _ := d.object(root, "", rootKeys)
	c := &Config{Version: 1}

	if v, ok := o["version"]; !ok {
		d.errorf(r, "version", `required: put "version: 1" at the top of the file`)
	} else if n, ok := d.integer(v, "version"); ok && n != 1 {
		// Another version's keys mean other things: say only this.
		d.errs = nil
		d.errorf(v, "version", "unsupported version %d; this Stagely reads version 1", n)
		return nil
	}

	c.Compose = []string{defaultCompose}
	if v, ok := o["compose"]; ok {
		c.Compose = d.compose(v)
	}

	if v, ok := o["previews"]; ok {
		c.Previews = d.previews(v)
	} else {
		d.errorf(r, "previews", "required: list at least one preview, with its name, service and port")
	}

	c.Health = Health{Timeout: defaultHealthTimeout, Interval: defaultHealthInterval}
	if v, ok := o["health"]; ok {
		c.Health = d.health(v)
	}

	if v, ok := o["provider"]; ok {
		c.Provider = d.provider(v)
	}

	if v, ok := o["ttl"]; ok {
		c.TTL, _ = d.duration(v, "ttl", minTTL, maxTTL)
	}

	if v, ok := o["env"]; ok {
		c.Env = d.env(v)
	}

	if v, ok := o["secrets"]; ok {
		c.Secrets = d.secrets(v, c.Env)
	}

	c.Build = Build{Timeout: defaultBuildTimeout}
	if v, ok := o["build"]; ok {
		if b, ok := d.object(v, "build", buildKeys); ok {
			if t, ok := b["timeout"]; ok {
				c.Build.Timeout, _ = d.duration(t, "build.timeout", minBuildTimeout, maxBuildTimeout)
			}
		}
	}
	return c
}

// compose decodes one path or a list of paths.
func (d *decoder) compose(v *yaml.Node) []string {
	items, field := []*yaml.Node{v}, func(int) string { return "compose" }
	if resolve(v).Kind == yaml.SequenceNode {
		items, _ = d.list(v, "compose")
		field = func(i int) string { return fmt.Sprintf("compose[%d]", i) }
		if len(items) == 0 {
			d.errorf(v, "compose", "must name at least one file; leave the key out for %q", defaultCompose)
		}
		if len(items) > maxComposeFiles {
			d.errorf(v, "compose", "at most %d files, got %d", maxComposeFiles, len(items))
		}
	}
	var out []string
	seen := map[string]int{}
	for i, it := range items {
		s, ok := d.str(it, field(i))
		if !ok {
			continue
		}
		p, problem := cleanComposePath(s)
		if problem != "" {
			d.errorf(it, field(i), "%s", problem)
			continue
		}
		if first, ok := seen[p]; ok {
			d.errorf(it, field(i), "%s is listed twice (first on line %d)", quote(p), first)
			continue
		}
		seen[p] = it.Line
		out = append(out, p)
	}
	return out
}

// cleanComposePath returns p cleaned, or why it is not acceptable.
func cleanComposePath(p string) (string, string) {
	switch {
	case p == "":
		return "", "must not be empty"
	case strings.IndexFunc(p, unicode.IsControl) >= 0:
		return "", "must not contain control characters"
	case strings.Contains(p, `\`):
		return "", `use "/" between directories, not "\"`
	case strings.HasPrefix(p, "/"):
		return "", "must be relative to the repository root, not absolute"
	case strings.HasPrefix(p, "-"):
		return "", `must not start with "-"`
	case strings.HasSuffix(p, "/"):
		return "", "must name a file, not a directory"
	}
	c := path.Clean(p)
	switch {
	case c == ".":
		return "", "must name a file"
	case c == ".." || strings.HasPrefix(c, "../"):
		return "", "must stay inside the repository"
	}
	return c, ""
}

func (d *decoder) previews(v *yaml.Node) []Preview {
	items, ok := d.list(v, "previews")
	if !ok {
		return nil
	}
	if len(items) == 0 {
		d.errorf(v, "previews", "must list at least one preview, with its name, service and port")
	}
	if len(items) > maxPreviews {
		d.errorf(v, "previews", "at most %d previews, got %d", maxPreviews, len(items))
	}
	var out []Preview
	names := map[string]int{}
	for i, it := range items {
		field := fmt.Sprintf("previews[%d]", i)
		o, ok := d.object(it, field, previewKeys)
		if !ok {
			continue
		}
		at := resolve(it)
		p := Preview{Path: defaultPreviewPath}
		if n, ok := o["name"]; !ok {
			d.errorf(at, field+".name", "required: a short DNS-safe name like \"web\"")
		} else if s, ok := d.str(n, field+".name"); ok {
			if problem := checkPreviewName(s); problem != "" {
				d.errorf(n, field+".name", "%s", problem)
			} else if first, ok := names[s]; ok {
				d.errorf(n, field+".name", "%s is used twice (first on line %d)", quote(s), first)
			} else {
				names[s] = n.Line
				p.Name = s
			}
		}
		if n, ok := o["service"]; !ok {
			d.errorf(at, field+".service", "required: the compose service to expose")
		} else if s, ok := d.str(n, field+".service"); ok {
			if len(s) > 63 || !serviceName.MatchString(s) {
				d.errorf(n, field+".service", "%s is not a compose service name (letters, digits, '.', '_', '-')", quote(s))
			} else {
				p.Service = s
			}
		}
		if n, ok := o["port"]; !ok {
			d.errorf(at, field+".port", "required: the port the service listens on inside its container")
		} else if port, ok := d.integer(n, field+".port"); ok {
			if port < 1 || port > 65535 {
				d.errorf(n, field+".port", "must be between 1 and 65535")
			} else {
				p.Port = port
			}
		}
		if n, ok := o["path"]; ok {
			if s, ok := d.str(n, field+".path"); ok {
				if problem := checkURLPath(s); problem != "" {
					d.errorf(n, field+".path", "%s", problem)
				} else {
					p.Path = s
				}
			}
		}
		out = append(out, p)
	}
	return out
}

func checkPreviewName(s string) string {
	switch {
	case len(s) > maxPreviewName:
		return fmt.Sprintf("%s is longer than %d characters", quote(s), maxPreviewName)
	case !previewName.MatchString(s):
		if lower := strings.ToLower(s); lower != s && previewName.MatchString(lower) {
			return fmt.Sprintf("%s must be lowercase: %q", quote(s), lower)
		}
		return fmt.Sprintf("%s must be lowercase letters, digits and '-', starting and ending with a letter or digit", quote(s))
	case strings.Contains(s, "--"):
		return fmt.Sprintf("%s must not contain \"--\"", quote(s))
	}
	return ""
}

// checkURLPath says what is wrong with an absolute URL path, or "".
func checkURLPath(s string) string {
	odd := strings.IndexFunc(s, func(r rune) bool { return !urlPathChar(r) })
	switch {
	case !strings.HasPrefix(s, "/"):
		return fmt.Sprintf("must start with \"/\", got %s", quote(s))
	case strings.HasPrefix(s, "//"):
		return "must not start with \"//\""
	case len(s) > 1024:
		return "must be at most 1024 characters"
	case strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return "must not contain spaces or control characters (escape them, like %20)"
	case odd >= 0:
		// The path ends the preview URL in the PR comment and the Check
		// Run: a character a URL cannot hold would end it there, and the
		// rest would be Markdown of the author's making.
		r, _ := utf8.DecodeRuneInString(s[odd:])
		return fmt.Sprintf("must hold only the characters of a URL (escape %q as %s)", r, url.PathEscape(string(r)))
	}
	return ""
}

// urlPathChar reports whether r may appear as it is in a URL's path,
// query or fragment (RFC 3986: unreserved, sub-delims, ":", "@", "/",
// "?", "#" and the "%" of an escape).
func urlPathChar(r rune) bool {
	switch {
	case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9':
		return true
	}
	return strings.ContainsRune("-._~!$&'()*+,;=:@/?#%", r)
}

func (d *decoder) health(v *yaml.Node) Health {
	h := Health{Timeout: defaultHealthTimeout, Interval: defaultHealthInterval}
	o, ok := d.object(v, "health", healthKeys)
	if !ok {
		return h
	}
	if n, ok := o["path"]; ok {
		if s, ok := d.str(n, "health.path"); ok {
			if problem := checkURLPath(s); problem != "" {
				d.errorf(n, "health.path", "%s", problem)
			} else {
				h.Path = s
			}
		}
	}
	if n, ok := o["timeout"]; ok {
		if t, ok := d.duration(n, "health.timeout", minHealthTimeout, maxHealthTimeout); ok {
			h.Timeout = t
		}
	}
	h.Interval = min(h.Interval, h.Timeout)
	if n, ok := o["interval"]; ok {
		if t, ok := d.duration(n, "health.interval", minInterval, maxHealthTimeout); ok {
			if t > h.Timeout {
				d.errorf(n, "health.interval", "must not be longer than health.timeout (%s)", formatDuration(h.Timeout))
			} else {
				h.Interval = t
			}
		}
	}
	if n, ok := o["expect_status"]; ok {
		if st, ok := d.integer(n, "health.expect_status"); ok {
			switch {
			case st < 100 || st > 599:
				d.errorf(n, "health.expect_status", "must be an HTTP status code, between 100 and 599")
			case o["path"] == nil:
				d.errorf(n, "health.expect_status", "needs health.path: a status code needs an HTTP check")
			default:
				h.ExpectStatus = st
			}
		}
	}
	return h
}

func (d *decoder) provider(v *yaml.Node) Provider {
	var p Provider
	o, ok := d.object(v, "provider", providerKeys)
	if !ok {
		return p
	}
	if n, ok := o["name"]; !ok {
		d.errorf(resolve(v), "provider.name", "required: one of %s", strings.Join(providers, ", "))
	} else if s, ok := d.str(n, "provider.name"); ok {
		if slices.Contains(providers, s) {
			p.Name = s
		} else if k := suggest(s, providers); k != "" {
			d.errorf(n, "provider.name", "unknown provider %s (did you mean %q?)", quote(s), k)
		} else {
			d.errorf(n, "provider.name", "unknown provider %s (expected one of: %s)", quote(s), strings.Join(providers, ", "))
		}
	}
	for _, f := range []struct {
		key string
		dst *string
	}{{"size", &p.Size}, {"region", &p.Region}, {"image", &p.Image}} {
		n, ok := o[f.key]
		if !ok {
			continue
		}
		if s, ok := d.str(n, "provider."+f.key); ok {
			if providerToken.MatchString(s) {
				*f.dst = s
			} else {
				d.errorf(n, "provider."+f.key, "%s must be letters, digits and . _ : / - (at most 128)", quote(s))
			}
		}
	}
	return p
}

func (d *decoder) env(v *yaml.Node) map[string]string {
	m, ok := d.mapping(v, "env")
	if !ok {
		return nil
	}
	out := map[string]string{}
	for _, p := range d.pairs(m, "env") {
		if problem := checkVarName(p.name); problem != "" {
			d.errorf(p.key, "env", "%s %s", quote(p.name), problem)
			continue
		}
		field := "env." + p.name
		r := resolve(p.val)
		switch {
		case r.Kind != yaml.ScalarNode:
			d.errorf(p.val, field, "must be a string, got %s", describe(r))
		case r.ShortTag() == "!!null":
			out[p.name] = ""
		case strings.ContainsRune(r.Value, 0):
			d.errorf(p.val, field, "must not contain a NUL character")
		default:
			// Numbers and booleans keep the text as written, as compose
			// does: PORT: 8080 is "8080", DEBUG: true is "true".
			out[p.name] = r.Value
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// checkVarName says what is wrong with variable name s, as words to follow
// the name, or "".
func checkVarName(s string) string {
	switch {
	case !envName.MatchString(s):
		return "is not a variable name: use letters, digits and '_', not starting with a digit"
	case strings.HasPrefix(strings.ToUpper(s), "STAGELY_"):
		return "is reserved: names starting with STAGELY_ belong to Stagely"
	}
	return ""
}

// secrets decodes the list of secret names. Unlike elsewhere, its messages
// never quote what is written: a malformed entry may be a pasted value.
func (d *decoder) secrets(v *yaml.Node, env map[string]string) []string {
	r := resolve(v)
	if r.Kind == yaml.MappingNode {
		d.errorf(v, "secrets", "must be a list of secret names; set their values in Stagely, never in this file")
		return nil
	}
	if r.Kind != yaml.SequenceNode {
		d.errorf(v, "secrets", "must be a list of secret names, got %s", kind(r))
		return nil
	}
	items, _ := d.list(v, "secrets")
	var out []string
	seen := map[string]int{}
	for i, it := range items {
		field := fmt.Sprintf("secrets[%d]", i)
		ri := resolve(it)
		if ri.Kind != yaml.ScalarNode || ri.ShortTag() != "!!str" {
			d.errorf(it, field, "must be a secret's name, got %s", kind(ri))
			continue
		}
		s := ri.Value
		first, dup := seen[s]
		_, inEnv := env[s]
		switch problem := checkVarName(s); {
		case !envName.MatchString(s):
			msg := "must be a secret's name: letters, digits and '_', not starting with a digit"
			if strings.ContainsAny(s, "=:") {
				msg += "; set the value in Stagely, never in this file"
			}
			d.errorf(it, field, "%s", msg)
		case problem != "":
			d.errorf(it, field, "%s %s", quote(s), problem)
		case dup:
			d.errorf(it, field, "%s is listed twice (first on line %d)", quote(s), first)
		case inEnv:
			d.errorf(it, field, "%s is also set in env; a variable is either plain or secret", quote(s))
		default:
			seen[s] = it.Line
			out = append(out, s)
		}
	}
	return out
}
