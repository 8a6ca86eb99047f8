package protocol

import (
	"encoding/json"
	"fmt"
	"time"
)

// Version is the protocol version. An agent sends it in every Request; a
// server refuses versions it does not speak with CodeBadRequest.
const Version = 1

// Op names a call.
type Op string

// The calls an agent makes. Each is one Request on a fresh stream.
const (
	// OpExchange trades a one-time bootstrap token for a long-lived agent
	// token. The only call made without an agent token.
	OpExchange Op = "exchange"
	// OpPoll long-polls for the agent's desired deployment.
	OpPoll Op = "poll"
	// OpSource streams the source tarball of one deployment.
	OpSource Op = "source"
	// OpStep reports one deploy step.
	OpStep Op = "step"
	// OpLogs opens a stream of log batches for one deployment.
	OpLogs Op = "logs"
)

// Request is the first frame on every stream, written by the agent.
// Exactly the field named by Op is set.
type Request struct {
	Version int `json:"version"`
	Op      Op  `json:"op"`
	// Token is the agent token. Empty only for OpExchange.
	Token string `json:"token,omitempty"`

	Exchange *ExchangeRequest `json:"exchange,omitempty"`
	Poll     *PollRequest     `json:"poll,omitempty"`
	Source   *SourceRequest   `json:"source,omitempty"`
	Step     *StepReport      `json:"step,omitempty"`
	Logs     *LogsRequest     `json:"logs,omitempty"`
}

// Response is the server's answer frame. Error is set when the call
// failed; otherwise the field matching the request's Op (if that op has a
// result) is set.
type Response struct {
	Error    *Error            `json:"error,omitempty"`
	Exchange *ExchangeResponse `json:"exchange,omitempty"`
	Poll     *PollResponse     `json:"poll,omitempty"`
	Source   *SourceInfo       `json:"source,omitempty"`
}

// ExchangeRequest trades a bootstrap token for an agent token. The agent
// proposes the agent token itself (32 random bytes, hex): the server stores
// only its hash, and an exchange retried after a crash, with the same pair,
// succeeds again instead of locking the agent out.
type ExchangeRequest struct {
	BootstrapToken string    `json:"bootstrap_token"`
	AgentToken     string    `json:"agent_token"`
	Agent          AgentInfo `json:"agent"`
}

// AgentInfo describes the agent, for the server's records.
type AgentInfo struct {
	Version  string `json:"version,omitempty"`
	Hostname string `json:"hostname,omitempty"`
}

// ExchangeResponse says who the agent is from now on.
type ExchangeResponse struct {
	AgentID       string `json:"agent_id"`
	EnvironmentID string `json:"environment_id"`
}

// PollRequest asks for a deployment newer than After.
type PollRequest struct {
	// After is the generation the agent last received (0 at first boot).
	After int64 `json:"after"`
	// Wait is how long the server may hold the call before answering
	// with no deployment. The server caps it.
	Wait Duration `json:"wait"`
}

// PollResponse carries the desired deployment, or none when Wait passed
// with nothing newer than After.
type PollResponse struct {
	Deployment *Deployment `json:"deployment,omitempty"`
}

// Action is what a deployment asks the agent to do.
type Action string

// Actions.
const (
	// ActionDeploy builds and starts (or redeploys in place) the
	// environment at SHA.
	ActionDeploy Action = "deploy"
	// ActionDestroy removes every container, network, volume and image of
	// the environment.
	ActionDestroy Action = "destroy"
)

// Deployment is the desired state of the agent's environment.
type Deployment struct {
	EnvironmentID string `json:"environment_id"`
	// Generation increases with every change of desired state; step
	// reports and logs carry it so the server can drop stale ones.
	Generation int64  `json:"generation"`
	Action     Action `json:"action"`
	SHA        string `json:"sha,omitempty"`
	// ComposeFiles are relative to the repository root, in -f order.
	ComposeFiles []string `json:"compose_files,omitempty"`
	// Previews are the URLs the environment exposes; the first is the
	// primary one and is health-checked.
	Previews []Preview `json:"previews,omitempty"`
	Health   Health    `json:"health"`
	// Env holds plain variables, Secrets the decrypted secret values; both
	// reach compose interpolation and every service's environment. Secret
	// values are masked in every log line.
	Env     map[string]string `json:"env,omitempty"`
	Secrets Secrets           `json:"secrets,omitempty"`
	Policy  Policy            `json:"policy"`
	// BuildTimeout bounds `docker compose up --build --wait`; zero means
	// the agent's default.
	BuildTimeout Duration `json:"build_timeout,omitempty"`
}

// Preview is one URL of the environment: the compose service and the
// container port the proxy forwards it to.
type Preview struct {
	Name    string `json:"name"`
	Service string `json:"service"`
	Port    int    `json:"port"`
	// Host is the hostname the proxy routes to this preview through the
	// agent's tunnel.
	Host string `json:"host,omitempty"`
}

// Health is the check that decides when a deploy is up. It targets the
// first preview.
type Health struct {
	// Path is the HTTP path to GET; empty means a TCP connect check.
	Path string `json:"path,omitempty"`
	// Timeout is how long to keep trying; Interval the pause between tries.
	Timeout  Duration `json:"timeout,omitempty"`
	Interval Duration `json:"interval,omitempty"`
	// ExpectStatus is the one status that passes; zero means 2xx or 3xx.
	ExpectStatus int `json:"expect_status,omitempty"`
}

// Policy lists what the server allows a compose file to ask for. The zero
// Policy allows none of it.
type Policy struct {
	// AllowPrivileged allows privileged: true, devices,
	// device_cgroup_rules, cap_add of a capability that reaches the machine
	// (ALL, SYS_ADMIN, SYS_MODULE, SYS_RAWIO, SYS_PTRACE, DAC_READ_SEARCH,
	// BPF and the like), security_opt that turns off seccomp, AppArmor,
	// SELinux labels or the masking of /proc and /sys, and the build
	// entitlement security.insecure.
	AllowPrivileged bool `json:"allow_privileged,omitempty"`
	// AllowHostNetwork allows network_mode: host, networks named host and
	// the build entitlement network.host.
	AllowHostNetwork bool `json:"allow_host_network,omitempty"`
	// AllowHostNamespaces allows pid, ipc, uts, userns_mode and cgroup:
	// host.
	AllowHostNamespaces bool `json:"allow_host_namespaces,omitempty"`
	// AllowDockerSocket allows bind-mounting the Docker socket (or a
	// directory holding it).
	AllowDockerSocket bool `json:"allow_docker_socket,omitempty"`
	// AllowHostMounts allows host paths outside the repository: bind
	// mounts, build contexts, env files, secret and config files, build
	// SSH keys, and volumes that mount a device of the host.
	AllowHostMounts bool `json:"allow_host_mounts,omitempty"`
}

// Secrets maps secret names to values. It formats as a count, never as
// its values, so a stray %v does not print them.
type Secrets map[string]string

// String implements fmt.Stringer without the values.
func (s Secrets) String() string { return fmt.Sprintf("[%d secrets]", len(s)) }

// GoString implements fmt.GoStringer without the values.
func (s Secrets) GoString() string { return s.String() }

// SourceRequest asks for the source tarball of one deployment.
type SourceRequest struct {
	EnvironmentID string `json:"environment_id"`
	Generation    int64  `json:"generation"`
}

// SourceInfo is the response header before the tarball's data frames.
type SourceInfo struct {
	// StripTopLevel says the archive wraps the tree in one top-level
	// directory (GitHub's `owner-repo-sha/`), which the agent removes.
	StripTopLevel bool `json:"strip_top_level,omitempty"`
	// Gzip says the data is gzip-compressed.
	Gzip bool `json:"gzip,omitempty"`
}

// SourceTrailer ends a source stream: the byte count and SHA-256 of the
// data frames, or the error that cut the stream short.
type SourceTrailer struct {
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256,omitempty"`
	Error  *Error `json:"error,omitempty"`
}

// StepState is where a step is.
type StepState string

// Step states.
const (
	StepRunning   StepState = "running"
	StepSucceeded StepState = "succeeded"
	StepFailed    StepState = "failed"
)

// StepReport is one step of a deploy or destroy as it starts or ends.
type StepReport struct {
	EnvironmentID string    `json:"environment_id"`
	Generation    int64     `json:"generation"`
	Name          string    `json:"name"`
	State         StepState `json:"state"`
	Started       time.Time `json:"started"`
	// Finished is zero while the step runs.
	Finished time.Time `json:"finished,omitzero"`
	// Message is a human-readable line for the Check Run; on failure it
	// says what went wrong. Never holds a secret value.
	Message string `json:"message,omitempty"`
}

// LogsRequest opens a log stream for one deployment.
type LogsRequest struct {
	EnvironmentID string `json:"environment_id"`
	Generation    int64  `json:"generation"`
}

// LogBatch is one frame of a log stream. The last frame has Final set and
// no lines; the server answers it with a Response.
type LogBatch struct {
	Lines []LogLine `json:"lines,omitempty"`
	Final bool      `json:"final,omitempty"`
}

// MaxLogLines bounds the lines of one LogBatch. Decoded, a line costs the
// server some 80 bytes besides its text: a frame of MaxMessage bytes of
// empty lines would cost it over a hundred times its size.
const MaxLogLines = 1000

// Log streams.
const (
	// StreamBuild is `docker compose` output: build steps and container
	// lifecycle.
	StreamBuild = "build"
	// StreamRun is a container's stdout and stderr.
	StreamRun = "run"
	// StreamAgent is the agent's own remarks (dropped-line markers).
	StreamAgent = "agent"
)

// LogLine is one line of build or run output, secrets already masked.
type LogLine struct {
	Time   time.Time `json:"time"`
	Stream string    `json:"stream"`
	// Service is the compose service for run lines; empty otherwise.
	Service string `json:"service,omitempty"`
	Text    string `json:"text"`
	// Dropped is set on a marker line: this many lines before it were
	// dropped because the server did not keep up.
	Dropped int `json:"dropped,omitempty"`
}

// Duration is a time.Duration that travels as a Go duration string
// ("1m30s").
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string like \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration: %w", err)
	}
	*d = Duration(v)
	return nil
}
