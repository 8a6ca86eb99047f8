package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/stagely-dev/stagely/agent/compose"
	"github.com/stagely-dev/stagely/agent/containers"
	"github.com/stagely-dev/stagely/agent/health"
	"github.com/stagely-dev/stagely/agent/logs"
	"github.com/stagely-dev/stagely/agent/protocol"
	"github.com/stagely-dev/stagely/agent/source"
)

// Source is a deployment's source tarball as it arrives.
type Source struct {
	Body io.Reader
	// StripTopLevel removes GitHub's `owner-repo-sha/` wrapping directory.
	StripTopLevel bool
}

// Endpoint is where a preview's service listens on the compose network:
// the address the tunnel dials, with no port published on the host.
type Endpoint struct {
	Preview protocol.Preview
	Addr    string
}

// Result is a finished deploy.
type Result struct {
	Project    string
	Endpoints  []Endpoint
	Containers []containers.Container
}

// Deploy brings the environment to the deployment: unpack, check, write
// the override, compose up, health check. A second Deploy of the same
// environment redeploys in place: same project, same paths, so Compose
// recreates only what changed and the build cache stays warm.
func (e *Engine) Deploy(ctx context.Context, d protocol.Deployment, src Source, r Reporter) (Result, error) {
	if r == nil {
		r = discard{}
	}
	if err := validEnv(d.EnvironmentID); err != nil {
		return Result{}, err
	}
	if d.Action != "" && d.Action != protocol.ActionDeploy {
		return Result{}, fmt.Errorf("%w: Deploy given action %q", ErrInvalidDeployment, d.Action)
	}
	st := e.state(d.EnvironmentID)
	st.mu.Lock()
	defer st.mu.Unlock()

	secrets := make([]string, 0, len(d.Secrets))
	for _, v := range d.Secrets {
		secrets = append(secrets, v)
	}
	x := &run{e: e, d: d, r: r, m: logs.NewMasker(secrets), p: e.paths(d.EnvironmentID), project: ProjectName(d.EnvironmentID)}
	e.setMasker(d.EnvironmentID, x.m)

	err := x.step(ctx, StepSource, func(ctx context.Context) (string, error) { return x.unpack(ctx, src) })
	var p *compose.Project
	if err == nil {
		err = x.step(ctx, StepCompose, func(ctx context.Context) (msg string, err error) {
			p, msg, err = x.prepare(ctx)
			return msg, err
		})
	}
	if err == nil {
		err = x.step(ctx, StepUp, func(ctx context.Context) (string, error) { return x.up(ctx, p) })
	}
	x.settleTrees(ctx, err == nil)
	if err != nil {
		return Result{}, err
	}
	res := Result{Project: x.project, Containers: x.containers}
	if err := x.step(ctx, StepHealth, func(ctx context.Context) (msg string, err error) {
		res.Endpoints, msg, err = x.health(ctx)
		return msg, err
	}); err != nil {
		return res, err
	}
	return res, nil
}

// run is one deploy or destroy in progress.
type run struct {
	e       *Engine
	d       protocol.Deployment
	r       Reporter
	m       *logs.Masker
	p       envPaths
	project string
	// containers are the project's containers once compose up returned.
	containers []containers.Container
	// swapped is when unpack put the new tree at src, zero if it did not;
	// replaced is where the tree it replaced was retired, if there was one.
	swapped  time.Time
	replaced string
}

// step reports a step's start and end around fn. A failure's message is
// masked, and the returned error names the environment and the step.
func (x *run) step(ctx context.Context, name string, fn func(context.Context) (string, error)) error {
	rep := protocol.StepReport{EnvironmentID: x.d.EnvironmentID, Generation: x.d.Generation, Name: name,
		State: protocol.StepRunning, Started: time.Now()}
	x.r.Step(rep)
	msg, err := fn(ctx)
	rep.Finished = time.Now()
	if err != nil {
		rep.State, rep.Message = protocol.StepFailed, x.m.Mask(err.Error())
		x.r.Step(rep)
		return &StepError{Environment: x.d.EnvironmentID, Generation: x.d.Generation, Step: name, msg: rep.Message, err: err}
	}
	rep.State, rep.Message = protocol.StepSucceeded, x.m.Mask(msg)
	x.r.Step(rep)
	return nil
}

// StepError is a failed step. Its message has the secrets masked; Unwrap
// reaches the cause for errors.Is and errors.As.
type StepError struct {
	Environment string
	Generation  int64
	Step        string
	msg         string
	err         error
}

// Error implements error.
func (e *StepError) Error() string {
	return fmt.Sprintf("environment %s, generation %d: step %s: %s", e.Environment, e.Generation, e.Step, e.msg)
}

// Unwrap returns the cause.
func (e *StepError) Unwrap() error { return e.err }

// unpack receives the tarball into a staging directory and swaps it in,
// so a failed unpack leaves the running tree alone; the tree it replaces
// stays while containers may mount it (see trees.go).
func (x *run) unpack(ctx context.Context, src Source) (string, error) {
	if src.Body == nil {
		return "", fmt.Errorf("%w: no source", ErrInvalidDeployment)
	}
	if err := os.MkdirAll(x.p.dir, 0o700); err != nil {
		return "", err
	}
	if err := os.RemoveAll(x.p.staging); err != nil {
		return "", err
	}
	stats, err := source.Unpack(ctx, src.Body, x.p.staging, source.Options{
		Limits: x.e.cfg.SourceLimits, StripTopLevel: src.StripTopLevel, Previous: x.p.src})
	if err != nil {
		os.RemoveAll(x.p.staging)
		return "", err
	}
	if err := x.swap(); err != nil {
		return "", err
	}
	return fmt.Sprintf("unpacked %d files, %s, at %s", stats.Files, size(stats.Bytes), short(x.d.SHA)), nil
}

// prepare loads and checks the compose files and writes the env and
// override files.
func (x *run) prepare(ctx context.Context) (*compose.Project, string, error) {
	vars := make(map[string]string, len(x.d.Env)+len(x.d.Secrets))
	for k, v := range x.d.Env {
		vars[k] = v
	}
	for k, v := range x.d.Secrets {
		vars[k] = v
	}
	p, err := compose.Load(ctx, x.project, x.p.src, x.d.ComposeFiles, vars)
	if err != nil {
		return nil, "", err
	}
	if err := compose.Check(p, x.d.Policy); err != nil {
		return nil, "", err
	}
	for _, pv := range x.d.Previews {
		if _, ok := p.Model.Services[pv.Service]; !ok {
			return nil, "", fmt.Errorf("preview %q: service %q is not an active service of the compose files", pv.Name, pv.Service)
		}
	}
	if err := compose.WriteEnvFile(x.p.envFile, vars); err != nil {
		return nil, "", err
	}
	override, err := compose.Override(p, x.d.EnvironmentID, x.p.envFile)
	if err != nil {
		return nil, "", err
	}
	if err := compose.WriteOverride(x.p.override, override); err != nil {
		return nil, "", err
	}
	inv := x.invocation(p)
	b, _ := json.Marshal(inv)
	if err := os.WriteFile(x.p.invocation, b, 0o600); err != nil {
		return nil, "", fmt.Errorf("record invocation: %w", err)
	}
	names := p.Model.ServiceNames()
	sort.Strings(names)
	return p, fmt.Sprintf("%d services (%s), policy passed", len(names), strings.Join(names, ", ")), nil
}

func (x *run) invocation(p *compose.Project) compose.Invocation {
	inv := compose.Invocation{Project: x.project, Dir: x.p.src, Files: append(append([]string{}, p.Files...), x.p.override)}
	if p.DotEnv != "" {
		inv.EnvFiles = append(inv.EnvFiles, p.DotEnv)
	}
	inv.EnvFiles = append(inv.EnvFiles, x.p.envFile)
	return inv
}

// up runs compose up, streaming its output as build log lines. On failure
// the error carries what the containers say and compose's last lines.
func (x *run) up(ctx context.Context, p *compose.Project) (string, error) {
	timeout := time.Duration(x.d.BuildTimeout)
	if timeout <= 0 {
		timeout = x.e.cfg.BuildTimeout
	}
	upCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tail := newTail(15)
	emit := func(line string) {
		x.r.Log(protocol.LogLine{Time: time.Now(), Stream: protocol.StreamBuild, Text: line})
		tail.add(line)
	}
	stdout, stderr := logs.NewLineWriter(x.m, emit), logs.NewLineWriter(x.m, emit)
	began := time.Now()
	err := x.e.cfg.Compose.Up(upCtx, x.invocation(p), stdout, stderr)
	stdout.Flush()
	stderr.Flush()
	x.tidy(ctx)
	cs, lerr := x.e.cfg.Docker.Containers(ctx, x.project)
	x.containers = cs
	if err != nil {
		if errors.Is(upCtx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("%w: build timeout %v reached", err, timeout)
		}
		var b strings.Builder
		b.WriteString(err.Error())
		for _, c := range cs {
			if d := diagnose(c); d != "" {
				b.WriteString("\n" + d)
			}
		}
		if lines := tail.lines(); len(lines) > 0 {
			b.WriteString("\nlast lines of compose output:\n" + strings.Join(lines, "\n"))
		}
		return "", &upError{msg: b.String(), err: err}
	}
	if lerr != nil {
		return "", lerr
	}
	if err := x.refreshTreeMounts(ctx, p, began); err != nil {
		return "", err
	}
	running := 0
	for _, c := range cs {
		if c.State == "running" {
			running++
		}
	}
	return fmt.Sprintf("%d of %d containers running", running, len(cs)), nil
}

// tidy frees the disk a build took beyond what the running containers
// need, after every build, failed ones too: without it a pull request
// that takes many pushes fills the machine's disk, and then every deploy
// fails. A failure here costs only disk, so it fails nothing.
func (x *run) tidy(ctx context.Context) {
	note := func(text string) {
		x.r.Log(protocol.LogLine{Time: time.Now(), Stream: protocol.StreamAgent, Text: text})
	}
	// The images this build replaced, unless a container still runs
	// one (a failed deploy leaves the old ones running).
	if n, err := x.e.cfg.Docker.PruneDangling(ctx, x.project); err != nil {
		note("remove replaced images: " + err.Error())
	} else if n > 0 {
		note(fmt.Sprintf("removed %d replaced images", n))
	}
	// Then the build cache, which has no bound of its own; the layers of
	// the images just removed are cache now, and go first.
	if n, freed, err := x.e.cfg.Docker.PruneBuildCache(ctx, x.e.cfg.MaxBuildCache); err != nil {
		note("trim build cache: " + err.Error())
	} else if n > 0 {
		note(fmt.Sprintf("trimmed the build cache to %s: removed %d records, %s", size(x.e.cfg.MaxBuildCache), n, size(int64(freed))))
	}
}

// refreshTreeMounts restarts the containers that Compose kept across a
// redeploy although they bind-mount the repository: the new tree was
// swapped in under their mounts, and only a restart mounts it afresh.
func (x *run) refreshTreeMounts(ctx context.Context, p *compose.Project, began time.Time) error {
	services := map[string]bool{}
	for _, s := range p.TreeMounts() {
		services[s] = true
	}
	restarted := false
	for _, c := range x.containers {
		if !services[c.Service] || c.State != "running" || !c.StartedAt.Before(began) {
			continue
		}
		x.r.Log(protocol.LogLine{Time: time.Now(), Stream: protocol.StreamAgent, Service: c.Service,
			Text: fmt.Sprintf("restarting %s: it mounts files of the repository, which changed", c.Name)})
		if err := x.e.cfg.Docker.Restart(ctx, c.ID); err != nil {
			return err
		}
		restarted = true
	}
	if !restarted {
		return nil
	}
	cs, err := x.e.cfg.Docker.Containers(ctx, x.project)
	if err != nil {
		return err
	}
	x.containers = cs
	return nil
}

type upError struct {
	msg string
	err error
}

func (e *upError) Error() string { return e.msg }
func (e *upError) Unwrap() error { return e.err }

// diagnose says what is wrong with a container, or "".
func diagnose(c containers.Container) string {
	switch {
	case c.State == "exited" || c.State == "dead":
		return fmt.Sprintf("container %s (service %s) exited with code %d after %d restarts", c.Name, c.Service, c.ExitCode, c.RestartCount)
	case c.State == "restarting":
		return fmt.Sprintf("container %s (service %s) is restarting (%d restarts, last exit code %d)", c.Name, c.Service, c.RestartCount, c.ExitCode)
	case c.Health == "unhealthy":
		return fmt.Sprintf("container %s (service %s) is unhealthy", c.Name, c.Service)
	}
	return ""
}

// health resolves every preview's address and health-checks the first.
func (x *run) health(ctx context.Context) ([]Endpoint, string, error) {
	var eps []Endpoint
	for _, pv := range x.d.Previews {
		addr, err := containers.AddressIn(x.containers, x.project, pv.Service, pv.Port)
		if err != nil {
			return nil, "", fmt.Errorf("preview %q: %w", pv.Name, err)
		}
		eps = append(eps, Endpoint{Preview: pv, Addr: addr})
	}
	if len(eps) == 0 {
		return nil, "no previews to check", nil
	}
	if err := health.Check(ctx, eps[0].Addr, x.d.Health); err != nil {
		return eps, "", fmt.Errorf("preview %q (service %s): %w", eps[0].Preview.Name, eps[0].Preview.Service, err)
	}
	what := "accepts connections"
	if x.d.Health.Path != "" {
		what = "answered GET " + x.d.Health.Path
	}
	return eps, fmt.Sprintf("%s %s at %s", eps[0].Preview.Service, what, eps[0].Addr), nil
}

func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	if sha == "" {
		return "unknown SHA"
	}
	return sha
}

func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

// tail keeps the last n lines written to it. Safe for concurrent use.
type tail struct {
	mu  sync.Mutex
	n   int
	buf []string
}

func newTail(n int) *tail { return &tail{n: n} }

func (t *tail) add(s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, s)
	if len(t.buf) > 2*t.n {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.n:]...)
	}
}

func (t *tail) lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.buf) > t.n {
		return append([]string(nil), t.buf[len(t.buf)-t.n:]...)
	}
	return append([]string(nil), t.buf...)
}
