package repoconfig

import (
	"slices"
	"strings"
	"time"
)

// FileName is the config file's path at the repository root.
const FileName = ".stagely.yml"

// MaxFileSize is the largest config file Parse accepts, in bytes. Loaders
// that know a file's size before downloading it can refuse it early.
const MaxFileSize = 64 << 10

// Config is a parsed, valid .stagely.yml. Parse fills the file-level
// defaults (Compose, Health, Build, preview paths); the server-level ones
// (Provider, TTL) stay zero until [Config.Defaults].
type Config struct {
	// Version is the format version; always 1.
	Version int
	// Compose lists the compose files, relative to the repository root,
	// cleaned, in the order given to `docker compose -f`. ["compose.yaml"]
	// when the file names none; when that default file does not exist, the
	// agent falls back to docker compose's own lookup order.
	Compose []string
	// Previews lists the URLs the environment exposes; at least one. The
	// first is the primary one, shown first and health-checked.
	Previews []Preview
	// Health says when a deploy counts as up.
	Health Health
	// Provider is where the VM runs. Zero means the server's default.
	Provider Provider
	// TTL is how long the environment may live without a new push before
	// the reaper destroys it. Zero means the server's default.
	TTL time.Duration
	// Env holds plain variables for the compose project. Nil when empty.
	Env map[string]string
	// Secrets names the repository secrets (values stored in Stagely,
	// never in the file) to inject as variables. Nil when empty.
	Secrets []string
	// Build bounds the image build.
	Build Build
}

// Preview is one preview URL: which compose service and container port the
// proxy forwards it to.
type Preview struct {
	// Name is a DNS label (a-z, 0-9, '-'; 1-30 characters; no "--"),
	// unique within the file. It becomes part of the preview's host name.
	Name string
	// Service is the compose service name.
	Service string
	// Port is the container port the service listens on, 1-65535.
	Port int
	// Path is where links to the preview point: begins with "/",
	// default "/".
	Path string
}

// Health is the check that decides when a deploy is up. It targets the
// first preview's service and port.
type Health struct {
	// Path is the HTTP path to GET. Empty means no HTTP check: the deploy is
	// up when the port accepts TCP connections.
	Path string
	// Timeout is how long to keep trying before the deploy fails.
	Timeout time.Duration
	// Interval is the pause between attempts.
	Interval time.Duration
	// ExpectStatus is the one status code that counts as healthy; zero
	// means any 2xx or 3xx.
	ExpectStatus int
}

// Healthy reports whether an HTTP response status passes the check.
func (h Health) Healthy(status int) bool {
	if h.ExpectStatus != 0 {
		return status == h.ExpectStatus
	}
	return status >= 200 && status < 400
}

// Provider names the cloud (or local) provider for the VM and the size,
// region and image it should use. Empty fields mean the provider's defaults.
type Provider struct {
	// Name is one of "local", "aws", "digitalocean", "hetzner".
	Name string
	// Size is the provider's machine type ("t3.medium", "s-2vcpu-4gb",
	// "cx32").
	Size string
	// Region is the provider's region or location ("eu-central-1",
	// "fra1", "fsn1").
	Region string
	// Image is the provider's image name or ID.
	Image string
}

// Build bounds the image build.
type Build struct {
	// Timeout is how long `docker compose build` may take.
	Timeout time.Duration
}

// Defaults are the server's choices for what a file may leave out.
type Defaults struct {
	// Provider is used when the file names no provider. Its Size, Region
	// and Image also fill the file's empty fields when the file names this
	// same provider; sizes and regions mean nothing to another provider.
	Provider Provider
	// TTL is used when the file sets none.
	TTL time.Duration
}

// Defaults fills the fields the file left to the server.
func (c *Config) Defaults(d Defaults) {
	if c.Provider.Name == "" {
		c.Provider.Name = d.Provider.Name
	}
	if c.Provider.Name == d.Provider.Name {
		if c.Provider.Size == "" {
			c.Provider.Size = d.Provider.Size
		}
		if c.Provider.Region == "" {
			c.Provider.Region = d.Provider.Region
		}
		if c.Provider.Image == "" {
			c.Provider.Image = d.Provider.Image
		}
	}
	if c.TTL == 0 {
		c.TTL = d.TTL
	}
}

// File-level defaults and bounds. They are documented in README.md and the
// package comment; keep the three in step.
const (
	defaultCompose        = "compose.yaml"
	defaultPreviewPath    = "/"
	defaultHealthTimeout  = 5 * time.Minute
	defaultHealthInterval = 2 * time.Second
	defaultBuildTimeout   = 30 * time.Minute

	maxPreviews     = 10
	maxComposeFiles = 10
	maxPreviewName  = 30

	minTTL           = 10 * time.Minute
	maxTTL           = 720 * time.Hour
	minHealthTimeout = time.Second
	maxHealthTimeout = time.Hour
	minInterval      = time.Second
	minBuildTimeout  = time.Minute
	maxBuildTimeout  = 3 * time.Hour
)

// providers are the valid provider names.
var providers = []string{"local", "aws", "digitalocean", "hetzner"}

// Providers returns the valid provider names: the server's --provider
// takes the same.
func Providers() []string { return slices.Clone(providers) }

// MarshalYAML renders c in the file format, so that Parse of the result
// yields c again. Defaults Parse would fill are written out explicitly.
func (c *Config) MarshalYAML() (any, error) {
	type preview struct {
		Name    string `yaml:"name"`
		Service string `yaml:"service"`
		Port    int    `yaml:"port"`
		Path    string `yaml:"path,omitempty"`
	}
	type health struct {
		Path         string `yaml:"path,omitempty"`
		Timeout      string `yaml:"timeout,omitempty"`
		Interval     string `yaml:"interval,omitempty"`
		ExpectStatus int    `yaml:"expect_status,omitempty"`
	}
	type provider struct {
		Name   string `yaml:"name"`
		Size   string `yaml:"size,omitempty"`
		Region string `yaml:"region,omitempty"`
		Image  string `yaml:"image,omitempty"`
	}
	type build struct {
		Timeout string `yaml:"timeout,omitempty"`
	}
	type file struct {
		Version  int               `yaml:"version"`
		Compose  []string          `yaml:"compose,omitempty"`
		Previews []preview         `yaml:"previews"`
		Health   *health           `yaml:"health,omitempty"`
		Provider *provider         `yaml:"provider,omitempty"`
		TTL      string            `yaml:"ttl,omitempty"`
		Env      map[string]string `yaml:"env,omitempty"`
		Secrets  []string          `yaml:"secrets,omitempty"`
		Build    *build            `yaml:"build,omitempty"`
	}
	f := file{
		Version: c.Version,
		Compose: c.Compose,
		TTL:     formatDuration(c.TTL),
		Env:     c.Env,
		Secrets: c.Secrets,
	}
	for _, p := range c.Previews {
		f.Previews = append(f.Previews, preview(p))
	}
	if c.Health != (Health{}) {
		f.Health = &health{
			Path:         c.Health.Path,
			Timeout:      formatDuration(c.Health.Timeout),
			Interval:     formatDuration(c.Health.Interval),
			ExpectStatus: c.Health.ExpectStatus,
		}
	}
	if c.Provider != (Provider{}) {
		p := provider(c.Provider)
		f.Provider = &p
	}
	if c.Build != (Build{}) {
		f.Build = &build{Timeout: formatDuration(c.Build.Timeout)}
	}
	return f, nil
}

// formatDuration writes d the way people write it: "72h", not "72h0m0s".
func formatDuration(d time.Duration) string {
	if d == 0 {
		return ""
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
