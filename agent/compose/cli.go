package compose

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

// ErrPluginMissing: the docker CLI or its compose v2 plugin is not
// installed.
var ErrPluginMissing = errors.New("the docker compose v2 plugin is not installed")

// CLI runs `docker compose`.
type CLI struct {
	// Command is the compose command; nil means {"docker", "compose"}.
	Command []string
	// Env is the environment compose runs in; nil means the variables the
	// docker CLI needs (PATH, HOME, DOCKER_*) taken from the agent's own,
	// and nothing else, so the agent's environment never leaks into a
	// project's interpolation.
	Env []string
}

// Invocation names one project run.
type Invocation struct {
	// Project is the compose project name (-p).
	Project string
	// Dir is the working directory, the repository's root.
	Dir string
	// Files are the compose files, absolute, in -f order, the override
	// last.
	Files []string
	// EnvFiles are passed as --env-file, in order.
	EnvFiles []string
}

// Version returns the plugin's version, or an error wrapping
// ErrPluginMissing that says what was tried.
func (c CLI) Version(ctx context.Context) (string, error) {
	cmd := c.command(ctx, "", "version", "--short")
	if _, err := exec.LookPath(cmd.Path); err != nil {
		return "", fmt.Errorf("%w: %s not found in PATH", ErrPluginMissing, cmd.Path)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%w: `%s` failed: %v: %s", ErrPluginMissing, strings.Join(cmd.Args, " "), err, strings.TrimSpace(out.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// Up runs `up -d --build --remove-orphans --wait`, streaming compose's
// output to stdout and stderr.
func (c CLI) Up(ctx context.Context, inv Invocation, stdout, stderr io.Writer) error {
	return c.run(ctx, inv, stdout, stderr, "up", "--detach", "--build", "--remove-orphans", "--wait")
}

// Down runs `down -v --rmi local --remove-orphans`.
func (c CLI) Down(ctx context.Context, inv Invocation, stdout, stderr io.Writer) error {
	return c.run(ctx, inv, stdout, stderr, "down", "--volumes", "--rmi", "local", "--remove-orphans")
}

func (c CLI) run(ctx context.Context, inv Invocation, stdout, stderr io.Writer, args ...string) error {
	global := []string{"--project-name", inv.Project, "--ansi", "never", "--progress", "plain"}
	for _, f := range inv.Files {
		global = append(global, "--file", f)
	}
	for _, f := range inv.EnvFiles {
		global = append(global, "--env-file", f)
	}
	cmd := c.command(ctx, inv.Dir, append(global, args...)...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("compose %s of %s: %w: %v", args[0], inv.Project, ErrPluginMissing, err)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("compose %s of %s: %w", args[0], inv.Project, ctx.Err())
		}
		return fmt.Errorf("compose %s of %s: %w", args[0], inv.Project, err)
	}
	return nil
}

func (c CLI) command(ctx context.Context, dir string, args ...string) *exec.Cmd {
	base := c.Command
	if len(base) == 0 {
		base = []string{"docker", "compose"}
	}
	cmd := exec.CommandContext(ctx, base[0], append(append([]string{}, base[1:]...), args...)...)
	cmd.Dir = dir
	cmd.Env = c.Env
	if cmd.Env == nil {
		cmd.Env = dockerEnv()
	}
	// Compose stops its containers' work cleanly on SIGTERM; give it a
	// moment before the kill.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// dockerEnv is the part of the agent's environment the docker CLI needs.
func dockerEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "PATH", k == "HOME", k == "TMPDIR", k == "XDG_RUNTIME_DIR",
			strings.HasPrefix(k, "DOCKER_"), k == "BUILDKIT_PROGRESS":
			env = append(env, kv)
		}
	}
	return env
}
