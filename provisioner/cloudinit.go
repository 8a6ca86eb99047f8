package provisioner

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/stagely-dev/stagely/templates"
)

// CloudInit is what a new machine needs to start its agent. RenderCloudInit
// turns it into the machine's user data.
//
// The agent reads its settings from the environment (on a VM, systemd loads
// them from /etc/stagely/agent.env; the local provider passes them to the
// process):
//
//	STAGELY_ENVIRONMENT_ID        the environment this machine serves
//	STAGELY_SERVER_URL            the Stagely server
//	STAGELY_PROXY_ADDR            host:port of the proxy's tunnel listener
//	STAGELY_BOOTSTRAP_TOKEN_FILE  the one-time bootstrap token, mode 0600
//	STAGELY_STATE_DIR             where the agent keeps its own token and work
//	STAGELY_AGENT_URL             where the agent binary was downloaded from
//	STAGELY_AGENT_SHA256          its checksum
//	STAGELY_CA_FILE               the CA that signed the proxy's tunnel
//	                              certificate, when it is a private one
type CloudInit struct {
	EnvironmentID int64
	// ServerURL is the Stagely server's base URL.
	ServerURL string
	// ProxyAddr is the host:port the agent dials for its tunnel.
	ProxyAddr string
	// AgentURL is where the machine downloads the `stagely` binary, and
	// AgentSHA256 its lower-case hex SHA-256: a binary that does not match
	// is never run.
	AgentURL, AgentSHA256 string
	// BootstrapToken is the agent's one-time token. It is written to a
	// root-only file; the agent trades it for its own token at first
	// contact, after which it is worthless.
	BootstrapToken string
	// TunnelCA is the PEM of the CA that signed the proxy's tunnel
	// certificate, when that is a private CA (Stagely's own, kept in the
	// server's data directory); empty: the machine's system roots. It is
	// public: it lets the agent verify the proxy, and nothing else.
	TunnelCA string
}

// Where the rendered user data puts things on the machine.
const (
	vmTokenFile = "/etc/stagely/bootstrap-token"
	vmEnvFile   = "/etc/stagely/agent.env"
	vmCAFile    = "/etc/stagely/tunnel-ca.pem"
	vmStateDir  = "/var/lib/stagely"
)

// tunnelCALimit bounds the CA bundle: it rides in user data, which every
// cloud limits to 16 to 64 KiB.
const tunnelCALimit = 8 << 10

const cloudInitTemplate = "cloud-init.yaml.tmpl"

// Every value lands in YAML, a shell script and a systemd environment file.
// Rather than quote for all three, values are held to characters none of
// them treats specially: no quotes, spaces, backslashes, dollars or
// newlines.
var (
	urlChars   = regexp.MustCompile(`^[A-Za-z0-9._~:/?#\[\]@!&()*+,;=%-]+$`)
	tokenChars = regexp.MustCompile(`^[A-Za-z0-9._~+/=-]{16,512}$`)
	hostChars  = regexp.MustCompile(`^[A-Za-z0-9.:-]+$`)
	sha256Hex  = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Validate reports every field that is missing or unsafe to embed.
func (c CloudInit) Validate() error {
	var bad []string
	if c.EnvironmentID <= 0 {
		bad = append(bad, "environment id is not positive")
	}
	for _, f := range []struct{ name, v string }{{"server URL", c.ServerURL}, {"agent URL", c.AgentURL}} {
		if err := checkURL(f.v); err != nil {
			bad = append(bad, f.name+" "+err.Error())
		}
	}
	if host, port, err := net.SplitHostPort(c.ProxyAddr); err != nil || host == "" || !hostChars.MatchString(host) {
		bad = append(bad, fmt.Sprintf("proxy address %q is not host:port", c.ProxyAddr))
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		bad = append(bad, fmt.Sprintf("proxy address %q has no valid port", c.ProxyAddr))
	}
	if !sha256Hex.MatchString(c.AgentSHA256) {
		bad = append(bad, "agent SHA-256 is not 64 lower-case hex digits")
	}
	if c.TunnelCA != "" {
		if _, err := canonicalCA(c.TunnelCA); err != nil {
			bad = append(bad, "tunnel CA "+err.Error())
		}
	}
	if !tokenChars.MatchString(c.BootstrapToken) {
		// Never echo the token itself: this error may reach a log.
		bad = append(bad, "bootstrap token is not 16 to 512 characters of A-Z a-z 0-9 . _ ~ + / = -")
	}
	if len(bad) > 0 {
		return fmt.Errorf("cloud-init for environment %d: %s", c.EnvironmentID, strings.Join(bad, "; "))
	}
	return nil
}

func checkURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case s == "":
		return errors.New("is empty")
	case err != nil:
		return fmt.Errorf("does not parse: %w", err)
	case u.Scheme != "https" && u.Scheme != "http":
		return fmt.Errorf("%q is not http(s)", s)
	case u.Host == "":
		return fmt.Errorf("%q has no host", s)
	case !urlChars.MatchString(s):
		return fmt.Errorf("%q has characters that are not safe to embed", s)
	}
	return nil
}

// canonicalCA re-encodes a PEM bundle of certificates, so that what goes
// into the user data is exactly base64 lines between BEGIN and END lines,
// whatever headers or text surrounded the input.
func canonicalCA(bundle string) (string, error) {
	if len(bundle) > tunnelCALimit {
		return "", fmt.Errorf("is %d bytes, over the limit of %d", len(bundle), tunnelCALimit)
	}
	var out []byte
	rest := []byte(bundle)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return "", fmt.Errorf("holds a %s block; only certificates belong there", b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return "", fmt.Errorf("holds a certificate that does not parse: %w", err)
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: b.Type, Bytes: b.Bytes})...)
	}
	if len(out) == 0 {
		return "", errors.New("holds no PEM certificate")
	}
	return string(out), nil
}

// Env returns the agent's environment (see CloudInit) with the token file,
// state directory and CA file at the given paths, one KEY=value per entry.
// caFile is left out when c has no tunnel CA.
func (c CloudInit) Env(tokenFile, stateDir, caFile string) []string {
	env := []string{
		"STAGELY_ENVIRONMENT_ID=" + strconv.FormatInt(c.EnvironmentID, 10),
		"STAGELY_SERVER_URL=" + c.ServerURL,
		"STAGELY_PROXY_ADDR=" + c.ProxyAddr,
		"STAGELY_BOOTSTRAP_TOKEN_FILE=" + tokenFile,
		"STAGELY_STATE_DIR=" + stateDir,
		"STAGELY_AGENT_URL=" + c.AgentURL,
		"STAGELY_AGENT_SHA256=" + c.AgentSHA256,
	}
	if c.TunnelCA != "" {
		env = append(env, "STAGELY_CA_FILE="+caFile)
	}
	return env
}

// RenderCloudInit renders the #cloud-config user data that installs Docker
// (unless the image has it), installs the agent binary after checking its
// checksum, writes the bootstrap token readable by root only, and runs the
// agent under systemd, restarted whenever it stops.
func RenderCloudInit(c CloudInit) (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	var caLines []string
	if c.TunnelCA != "" {
		ca, _ := canonicalCA(c.TunnelCA) // Validate checked it
		caLines = strings.Split(strings.TrimSuffix(ca, "\n"), "\n")
	}
	data := struct {
		EnvironmentID      int64
		Env                []string
		Token              string
		TokenFile, EnvFile string
		CAFile             string
		CA                 []string
	}{c.EnvironmentID, c.Env(vmTokenFile, vmStateDir, vmCAFile), c.BootstrapToken, vmTokenFile, vmEnvFile, vmCAFile, caLines}
	out, err := templates.Execute(cloudInitTemplate, data)
	if err != nil {
		return "", fmt.Errorf("render cloud-init for environment %d: %w", c.EnvironmentID, err)
	}
	return out, nil
}

// ParseCloudInit reads back the CloudInit that RenderCloudInit rendered into
// userData. The local provider uses it to start an agent process the way
// cloud-init would start it on a VM.
func ParseCloudInit(userData string) (CloudInit, error) {
	var doc struct {
		WriteFiles []struct {
			Path    string `yaml:"path"`
			Content string `yaml:"content"`
		} `yaml:"write_files"`
	}
	if err := yaml.Unmarshal([]byte(userData), &doc); err != nil {
		return CloudInit{}, fmt.Errorf("parse cloud-init: %w", err)
	}
	var c CloudInit
	var sawEnv, sawToken bool
	for _, f := range doc.WriteFiles {
		switch f.Path {
		case vmTokenFile:
			c.BootstrapToken, sawToken = f.Content, true
		case vmCAFile:
			c.TunnelCA = f.Content
		case vmEnvFile:
			sawEnv = true
			for line := range strings.Lines(f.Content) {
				k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
				switch k {
				case "STAGELY_ENVIRONMENT_ID":
					c.EnvironmentID, _ = strconv.ParseInt(v, 10, 64)
				case "STAGELY_SERVER_URL":
					c.ServerURL = v
				case "STAGELY_PROXY_ADDR":
					c.ProxyAddr = v
				case "STAGELY_AGENT_URL":
					c.AgentURL = v
				case "STAGELY_AGENT_SHA256":
					c.AgentSHA256 = v
				}
			}
		}
	}
	if !sawEnv || !sawToken {
		return CloudInit{}, fmt.Errorf("parse cloud-init: not Stagely's user data: no %s or %s", vmEnvFile, vmTokenFile)
	}
	if err := c.Validate(); err != nil {
		return CloudInit{}, fmt.Errorf("parse cloud-init: %w", err)
	}
	return c, nil
}
