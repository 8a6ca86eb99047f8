// Package local is the provider for the demo and the end-to-end tests: a
// "machine" is a process on this host (in production use, the `stagely
// agent` binary) started the way cloud-init would start it on a VM. The
// process gets the agent's environment read back from the user data, its
// one-time bootstrap token in a file of its own with mode 0600, and a
// working directory of its own.
//
// Each machine has a directory under Config.Dir holding its metadata, so
// List finds machines again after Stagely restarts, the same as a cloud's
// tags do. Its process is started detached (its parent exits at once, so
// the process outlives Stagely and is never left a zombie) in a process
// group of its own, and carries a marker in its environment naming its
// directory. State and Destroy find the machine's processes by that
// marker, never by a remembered process ID that the system may since have
// given to another program. Linux only: it reads /proc.
package local

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/stagely-dev/stagely/provisioner"
)

// Config says where machines live and what runs as one.
type Config struct {
	// Dir holds one directory per machine. Required.
	Dir string
	// Command is the program and arguments that play the machine, such as
	// the stagely binary and "agent". Required.
	Command []string
	// Env is added to the machine's environment. The process does not
	// inherit Stagely's environment, which may hold the server's secrets:
	// only PATH, HOME, TMPDIR, the locale and DOCKER_* pass, then the
	// agent's settings from the user data, then Env.
	Env []string
	// Namespace tells this Stagely's machines from another's sharing Dir.
	// Default provisioner.DefaultNamespace.
	Namespace string
	// StopGrace is how long Destroy waits after SIGTERM before it sends
	// SIGKILL. Default 10 seconds, time for an agent to stop its compose
	// project.
	StopGrace time.Duration
}

// Provider runs machines as processes on this host.
type Provider struct {
	cfg Config
	ns  string
	// mu serialises creates in this process; across processes, creating
	// the machine's directory is the lock.
	mu sync.Mutex
}

var _ provisioner.Provider = (*Provider)(nil)

// What a machine's directory holds.
const (
	metaFile  = "machine.json"
	userData  = "user-data"
	tokenFile = "bootstrap-token"
	stateDir  = "state"
	logFile   = "output.log"
	caFile    = "tunnel-ca.pem"
)

// markerVar is set in every machine process's environment to its
// directory.
const markerVar = "STAGELY_LOCAL_MACHINE"

type meta struct {
	Namespace     string    `json:"namespace"`
	EnvironmentID int64     `json:"environment_id"`
	Key           string    `json:"key"`
	Created       time.Time `json:"created"`
}

var idPattern = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

// New returns a provider that keeps its machines under cfg.Dir.
func New(cfg Config) (*Provider, error) {
	if cfg.Dir == "" {
		return nil, errors.New("local: no directory for machines")
	}
	if len(cfg.Command) == 0 {
		return nil, errors.New("local: no command to run as the machine (the stagely binary and \"agent\")")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	cfg.Dir = dir
	ns, err := provisioner.Namespace(cfg.Namespace)
	if err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 10 * time.Second
	}
	return &Provider{cfg: cfg, ns: ns}, nil
}

// Create starts the machine for spec, or returns the one already made
// with spec.Key. Size, region and image mean nothing here.
func (p *Provider) Create(ctx context.Context, spec provisioner.Spec) (provisioner.Machine, error) {
	fail := func(err error) (provisioner.Machine, error) {
		return provisioner.Machine{}, fmt.Errorf("create machine for environment %d on local: %w", spec.EnvironmentID, err)
	}
	if err := spec.Validate(); err != nil {
		return fail(err)
	}
	boot, err := provisioner.ParseCloudInit(spec.UserData)
	if err != nil {
		return fail(fmt.Errorf("%w: %w", provisioner.ErrInvalidSpec, err))
	}
	id := p.ns + "-" + spec.Key
	dir := filepath.Join(p.cfg.Dir, id)

	p.mu.Lock()
	defer p.mu.Unlock()
	if m, err := p.read(id); err == nil {
		return m, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fail(err)
	}
	// A directory without metadata is what a create that crashed half-way
	// leaves; it never started a process (metadata is written first).
	if err := os.RemoveAll(dir); err != nil {
		return fail(err)
	}
	if err := os.MkdirAll(p.cfg.Dir, 0o700); err != nil {
		return fail(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fail(fmt.Errorf("make the machine's directory: %w", err))
	}
	m := meta{Namespace: p.ns, EnvironmentID: spec.EnvironmentID, Key: spec.Key, Created: time.Now().UTC().Truncate(time.Second)}
	if err := writeFiles(dir, spec.UserData, boot, m); err != nil {
		return fail(err)
	}
	if err := p.start(ctx, dir, boot); err != nil {
		return fail(err)
	}
	return p.read(id)
}

func writeFiles(dir, ud string, boot provisioner.CloudInit, m meta) error {
	if err := os.WriteFile(filepath.Join(dir, userData), []byte(ud), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, tokenFile), []byte(boot.BootstrapToken), 0o600); err != nil {
		return err
	}
	if boot.TunnelCA != "" {
		if err := os.WriteFile(filepath.Join(dir, caFile), []byte(boot.TunnelCA), 0o644); err != nil {
			return err
		}
	}
	if err := os.Mkdir(filepath.Join(dir, stateDir), 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	// Written whole or not at all: a torn file would hide the machine from
	// List.
	tmp := filepath.Join(dir, metaFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, metaFile))
}

// passEnv are the variables of Stagely's own environment a machine gets.
var passEnv = []string{"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY", "DOCKER_CONTEXT"}

// start runs the machine's command detached: sh starts it in the
// background and exits, so init adopts it. sh runs in a new process group,
// which the command stays in.
func (p *Provider) start(ctx context.Context, dir string, boot provisioner.CloudInit) error {
	env := []string{}
	for _, k := range passEnv {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	env = append(env, boot.Env(filepath.Join(dir, tokenFile), filepath.Join(dir, stateDir), filepath.Join(dir, caFile))...)
	env = append(env, p.cfg.Env...)
	env = append(env, markerVar+"="+dir)
	const script = `log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!`
	args := append([]string{"-c", script, "stagely-machine", filepath.Join(dir, logFile)}, p.cfg.Command...)
	cmd := exec.CommandContext(ctx, "/bin/sh", args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("start %s: %w", p.cfg.Command[0], err)
	}
	if _, err := strconv.Atoi(strings.TrimSpace(string(out))); err != nil {
		return fmt.Errorf("start %s: no process ID from sh: %q", p.cfg.Command[0], out)
	}
	return nil
}

// read returns the machine named id from its metadata.
func (p *Provider) read(id string) (provisioner.Machine, error) {
	dir := filepath.Join(p.cfg.Dir, id)
	b, err := os.ReadFile(filepath.Join(dir, metaFile))
	if err != nil {
		return provisioner.Machine{}, err
	}
	var m meta
	if err := json.Unmarshal(b, &m); err != nil {
		return provisioner.Machine{}, fmt.Errorf("read machine %s: %w", id, err)
	}
	if m.Namespace != p.ns {
		return provisioner.Machine{}, fmt.Errorf("machine %s: %w", id, fs.ErrNotExist)
	}
	state := provisioner.StateStopped
	if procs, err := processes(dir); err != nil {
		return provisioner.Machine{}, err
	} else if len(procs) > 0 {
		state = provisioner.StateRunning
	}
	return provisioner.Machine{ID: id, EnvironmentID: m.EnvironmentID, Key: m.Key, State: state, Created: m.Created}, nil
}

// State is running while any of the machine's processes runs, stopped
// when none does (the machine's directory is still there), and missing
// after Destroy.
func (p *Provider) State(ctx context.Context, id string) (provisioner.State, error) {
	if !idPattern.MatchString(id) {
		return "", fmt.Errorf("local machine ID %q is not valid", id)
	}
	m, err := p.read(id)
	if errors.Is(err, fs.ErrNotExist) {
		return provisioner.StateMissing, nil
	}
	if err != nil {
		return "", err
	}
	return m.State, nil
}

// Destroy stops the machine's processes, their whole process groups
// (SIGTERM, then SIGKILL after StopGrace), and removes its directory.
func (p *Provider) Destroy(ctx context.Context, id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("local machine ID %q is not valid", id)
	}
	dir := filepath.Join(p.cfg.Dir, id)
	if err := stop(ctx, dir, p.cfg.StopGrace); err != nil {
		return fmt.Errorf("destroy local machine %s: %w", id, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("destroy local machine %s: %w", id, err)
	}
	return nil
}

// List returns this Stagely's machines, running or stopped.
func (p *Provider) List(ctx context.Context) ([]provisioner.Machine, error) {
	entries, err := os.ReadDir(p.cfg.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list local machines: %w", err)
	}
	var out []provisioner.Machine
	for _, e := range entries {
		if !e.IsDir() || !idPattern.MatchString(e.Name()) {
			continue
		}
		m, err := p.read(e.Name())
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list local machines: %w", err)
		}
		out = append(out, m)
	}
	return out, nil
}

// stop signals the process groups of the machine's processes until none
// is left.
func stop(ctx context.Context, dir string, grace time.Duration) error {
	deadline := time.Now().Add(grace)
	sig := syscall.SIGTERM
	for {
		procs, err := processes(dir)
		if err != nil {
			return err
		}
		if len(procs) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			if sig == syscall.SIGKILL {
				return fmt.Errorf("processes %v outlived SIGKILL", procs)
			}
			sig, deadline = syscall.SIGKILL, time.Now().Add(5*time.Second)
		}
		for _, pr := range procs {
			// The group holds the process's children too, even those
			// that dropped the marker. Each group was found through a
			// process carrying the marker just now, so it is this
			// machine's.
			if err := syscall.Kill(-pr.pgid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("signal process group %d: %w", pr.pgid, err)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

type proc struct{ pid, pgid int }

// processes returns the live processes whose environment carries the
// marker for dir.
func processes(dir string) ([]proc, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	marker := []byte("\x00" + markerVar + "=" + dir + "\x00")
	var out []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || !bytes.Contains(append([]byte{0}, env...), marker) {
			continue // gone, not ours to read, or not this machine's
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp …; comm may hold spaces and ')'.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) < 3 || fields[0] == "Z" || fields[0] == "X" {
			continue
		}
		pgid, err := strconv.Atoi(fields[2])
		if err != nil {
			continue
		}
		if !slices.ContainsFunc(out, func(p proc) bool { return p.pid == pid }) {
			out = append(out, proc{pid, pgid})
		}
	}
	return out, nil
}
