package provisioner

import (
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
}

// Where the rendered user data puts things on the machine.
const (
	vmTokenFile = "/etc/stagely/bootstrap-token"
	vmEnvFile   = "/etc/stagely/agent.env"
	vmStateDir  = "/var/lib/stagely"
)

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

// Env returns the agent's environment (see CloudInit) with the token file
// and state directory at the given paths, one KEY=value per entry.
func (c CloudInit) Env(tokenFile, stateDir string) []string {
	return []string{
		"STAGELY_ENVIRONMENT_ID=" + strconv.FormatInt(c.EnvironmentID, 10),
		"STAGELY_SERVER_URL=" + c.ServerURL,
		"STAGELY_PROXY_ADDR=" + c.ProxyAddr,
		"STAGELY_BOOTSTRAP_TOKEN_FILE=" + tokenFile,
		"STAGELY_STATE_DIR=" + stateDir,
		"STAGELY_AGENT_URL=" + c.AgentURL,
		"STAGELY_AGENT_SHA256=" + c.AgentSHA256,
	}
}

// RenderCloudInit renders the #cloud-config user data that installs Docker
// (unless the image has it), installs the agent binary after checking its
// checksum, writes the bootstrap token readable by root only, and runs the
// agent under systemd, restarted whenever it stops.
func RenderCloudInit(c CloudInit) (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	data := struct {
		EnvironmentID      int64
		Env                []string
		Token              string
		TokenFile, EnvFile string
	}{c.EnvironmentID, c.Env(vmTokenFile, vmStateDir), c.BootstrapToken, vmTokenFile, vmEnvFile}
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
