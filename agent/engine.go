package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/stagely-dev/stagely/agent/compose"
	"github.com/stagely-dev/stagely/agent/containers"
	"github.com/stagely-dev/stagely/agent/logs"
	"github.com/stagely-dev/stagely/agent/source"
)

// Config configures an Engine. Zero fields take the defaults named.
type Config struct {
	// WorkDir holds a directory per environment: src/ (the unpacked
	// tree, the compose project's root), retired/ (trees src replaced
	// that containers may still mount) and private/ (mode 0700: the env
	// file with the secrets, the override file). Required.
	WorkDir string
	// Docker is the engine connection. Required.
	Docker *containers.Docker
	// Compose runs the compose plugin; the zero value runs
	// `docker compose` with a scrubbed environment.
	Compose compose.CLI
	// SourceLimits bound the source tarball; zero means
	// source.DefaultLimits().
	SourceLimits source.Limits
	// BuildTimeout bounds `compose up` when the deployment sets none;
	// zero means 30 minutes.
	BuildTimeout time.Duration
	// MaxBuildCache bounds, in bytes, the engine's build cache after each
	// deploy; zero means DefaultMaxBuildCache.
	MaxBuildCache int64
}

// DefaultBuildTimeout bounds `compose up` when nothing else does.
const DefaultBuildTimeout = 30 * time.Minute

// DefaultMaxBuildCache holds the cache of a typical app's last build or
// two, so a push rebuilds only what it changed, and fits the smallest
// disk a machine gets by default: the 8 GiB root volume of an EC2
// instance, which the system and the images share. The engine may be
// remote or older than API 1.48, so the agent cannot size it to the
// disk's free space.
const DefaultMaxBuildCache = 2 << 30

// ErrInvalidDeployment: the deployment message cannot be acted on.
var ErrInvalidDeployment = errors.New("invalid deployment")

// Engine deploys and destroys environments on the local Docker engine.
// Calls for one environment are serialized; different environments may
// proceed at once. Safe for concurrent use.
type Engine struct {
	cfg Config

	mu   sync.Mutex
	envs map[string]*envState
}

// envState is what the engine remembers of one environment.
type envState struct {
	mu     sync.Mutex   // held through a deploy or destroy
	masker *logs.Masker // the latest deployment's secrets; guarded by Engine.mu
}

// New checks that WorkDir is usable and the compose plugin is installed
// (saying so clearly when it is not) and returns an Engine.
func New(ctx context.Context, cfg Config) (*Engine, error) {
	if cfg.WorkDir == "" || cfg.Docker == nil {
		return nil, errors.New("agent: Config.WorkDir and Config.Docker are required")
	}
	if err := os.MkdirAll(cfg.WorkDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: work directory: %w", err)
	}
	if _, err := cfg.Compose.Version(ctx); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if cfg.SourceLimits == (source.Limits{}) {
		cfg.SourceLimits = source.DefaultLimits()
	}
	if cfg.BuildTimeout <= 0 {
		cfg.BuildTimeout = DefaultBuildTimeout
	}
	if cfg.MaxBuildCache <= 0 {
		cfg.MaxBuildCache = DefaultMaxBuildCache
	}
	return &Engine{cfg: cfg, envs: map[string]*envState{}}, nil
}

// ProjectName is the compose project an environment runs as.
func ProjectName(env string) string { return "stagely-" + env }

// envIDPattern keeps environment IDs usable in a compose project name and
// a directory name.
var envIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,54}$`)

func validEnv(env string) error {
	if !envIDPattern.MatchString(env) {
		return fmt.Errorf("%w: environment id %q: want 1-55 of a-z, 0-9 and '-'", ErrInvalidDeployment, env)
	}
	return nil
}

func (e *Engine) state(env string) *envState {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.envs[env]
	if s == nil {
		s = &envState{}
		e.envs[env] = s
	}
	return s
}

func (e *Engine) setMasker(env string, m *logs.Masker) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.envs[env].masker = m
}

func (e *Engine) masker(env string) (*logs.Masker, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.envs[env]
	if s == nil || s.masker == nil {
		return nil, false
	}
	return s.masker, true
}

// paths of one environment's files.
type envPaths struct {
	dir, src, staging, since, retired, private, envFile, override, invocation string
}

func (e *Engine) paths(env string) envPaths {
	dir := filepath.Join(e.cfg.WorkDir, env)
	private := filepath.Join(dir, "private")
	return envPaths{
		dir:     dir,
		src:     filepath.Join(dir, "src"),
		staging: filepath.Join(dir, "src.new"),
		// since and retired keep the trees src replaced; see trees.go.
		since:    filepath.Join(dir, "src.since"),
		retired:  filepath.Join(dir, "retired"),
		private:  private,
		envFile:  filepath.Join(private, "env"),
		override: filepath.Join(private, "compose.override.yaml"),
		// invocation records how the project was last run, for Destroy.
		invocation: filepath.Join(private, "invocation.json"),
	}
}

// Address returns where the service of the environment listens on its
// compose network (host:port), looked up afresh: the tunnel calls it per
// connection, since a redeploy or a restart may move a container.
func (e *Engine) Address(ctx context.Context, env, service string, port int) (string, error) {
	if err := validEnv(env); err != nil {
		return "", err
	}
	return e.cfg.Docker.Address(ctx, ProjectName(env), service, port)
}
