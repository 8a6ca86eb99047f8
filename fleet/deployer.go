package fleet

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/agent/protocol"
	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/provisioner"
	"github.com/stagely-dev/stagely/reconciler"
)

// Deployer is the reconciler's Deployer backed by machines and agents.
type Deployer struct {
	DB       *bun.DB
	Bus      Bus
	Provider provisioner.Provider
	// ProviderName is recorded with each machine ("local", "aws", …).
	ProviderName string
	// Secret derives each machine's bootstrap token from its key, so a
	// create retried after a crash sends the same user data (EC2 refuses a
	// reused ClientToken with other parameters) without the token ever
	// being stored.
	Secret []byte
	// Boot is what every machine's cloud-init carries besides its token.
	Boot provisioner.CloudInit
	// PreviewHost names a preview's hostname from the environment's hash
	// and the preview's name; the first preview is the environment's main
	// one. PreviewURL makes the URL people open from that hostname.
	PreviewHost func(hash, name string, first bool) string
	PreviewURL  func(host string) string
	// Launch bounds waiting for a machine to run.
	Launch provisioner.Wait
	// AgentTimeout bounds waiting for the agent's first report.
	AgentTimeout time.Duration
	// Recheck is how often waits look again without a wake-up.
	Recheck time.Duration
	// Routes, if set, loses the environment's hostnames on Destroy, so
	// its URL answers 404 at once instead of 502 until the route expires.
	Routes interface {
		DeleteHost(ctx context.Context, host string) error
	}
}

var _ reconciler.Deployer = (*Deployer)(nil)

// Step names the Deployer reports itself, beside the agent's.
const (
	StepProvision = "Provision machine"
	StepAgent     = "Wait for agent"
)

func (d *Deployer) bootstrapToken(key string) string {
	m := hmac.New(sha256.New, d.Secret)
	m.Write([]byte("stagely bootstrap token\x00" + key))
	return hex.EncodeToString(m.Sum(nil))
}

type agentRow struct {
	ID        int64
	Key       string
	MachineID string
	State     string
	Provider  string
}

// foreign returns an error when a was made by another provider than this
// Deployer's (the server's --provider changed while it ran): this
// provider can neither see nor destroy it, and retiring its row would
// leave it running, billed, with nothing that knows of it.
func (d *Deployer) foreign(a agentRow, env int64) error {
	if a.Provider == "" || d.ProviderName == "" || a.Provider == d.ProviderName {
		return nil
	}
	return fmt.Errorf("machine %s of environment %d was made by %s, and this server makes %s machines: "+
		"run a server with --provider %s until it is destroyed (close the pull request), or destroy it by hand and retire its row",
		cmp.Or(a.MachineID, a.Key), env, a.Provider, d.ProviderName, a.Provider)
}

// machine returns the environment's live machine, provisioning one if it
// has none. The row (with its key) is written before the provider is
// asked, so a crash in between is repaired by asking again with that key.
func (d *Deployer) machine(ctx context.Context, t reconciler.Target, size, region, image string) (agentRow, error) {
	var a agentRow
	err := d.DB.DB.QueryRowContext(ctx, `
SELECT id, key, machine_id, state, provider FROM agents WHERE environment_id = $1 AND destroyed_at IS NULL ORDER BY id DESC LIMIT 1`,
		t.EnvironmentID).Scan(&a.ID, &a.Key, &a.MachineID, &a.State, &a.Provider)
	if errors.Is(err, sql.ErrNoRows) {
		var attempt int64
		if err := d.DB.DB.QueryRowContext(ctx, `SELECT coalesce(max(attempt), 0) + 1 FROM agents WHERE environment_id = $1`,
			t.EnvironmentID).Scan(&attempt); err != nil {
			return a, fmt.Errorf("next machine attempt of environment %d: %w", t.EnvironmentID, err)
		}
		a.Key = provisioner.Key(t.EnvironmentID, attempt)
		err = d.DB.DB.QueryRowContext(ctx, `
INSERT INTO agents (environment_id, attempt, key, provider, bootstrap_hash) VALUES ($1, $2, $3, $4, $5)
RETURNING id, machine_id, state`, t.EnvironmentID, attempt, a.Key, d.ProviderName, hashToken(d.bootstrapToken(a.Key))).
			Scan(&a.ID, &a.MachineID, &a.State)
	}
	if err != nil {
		return a, fmt.Errorf("machine of environment %d: %w", t.EnvironmentID, err)
	}
	if err := d.foreign(a, t.EnvironmentID); err != nil {
		return a, err
	}
	if a.State == "running" && a.MachineID != "" {
		st, err := d.Provider.State(ctx, a.MachineID)
		if err != nil {
			// Not knowing is not gone: a throttled or failed read must not
			// retire a live machine and make a second one.
			return a, fmt.Errorf("state of machine %s of environment %d: %w", a.MachineID, t.EnvironmentID, err)
		}
		if st == provisioner.StateStopped {
			// Powered off (its guest shut down, its host stopped; a local
			// machine's agent process ended): no agent will answer on it.
			// It goes, and a new attempt takes its place.
			if err := d.Provider.Destroy(ctx, a.MachineID); err != nil {
				return a, fmt.Errorf("destroy stopped machine %s of environment %d: %w", a.MachineID, t.EnvironmentID, err)
			}
		} else if !st.Gone() {
			return a, nil
		}
		// The machine died under us: retire it and start a new attempt.
		if _, err := d.DB.DB.ExecContext(ctx, `UPDATE agents SET state = 'destroyed', destroyed_at = now() WHERE id = $1`, a.ID); err != nil {
			return a, err
		}
		return d.machine(ctx, t, size, region, image)
	}
	boot := d.Boot
	boot.EnvironmentID, boot.BootstrapToken = t.EnvironmentID, d.bootstrapToken(a.Key)
	ud, err := provisioner.RenderCloudInit(boot)
	if err != nil {
		return a, fmt.Errorf("cloud-init for environment %d: %w", t.EnvironmentID, err)
	}
	m, err := provisioner.Launch(ctx, d.Provider, provisioner.Spec{
		EnvironmentID: t.EnvironmentID, Key: a.Key, Size: size, Region: region, Image: image, UserData: ud,
		Tags: map[string]string{"repo": t.Owner + "-" + t.Repo, "pr": strconv.Itoa(t.PR)},
	}, d.Launch)
	if errors.Is(err, provisioner.ErrKeySpent) {
		// The key's machine is gone, as when Launch gave up on it and the
		// process stopped before the row below was retired: a new attempt.
		if _, err := d.DB.DB.ExecContext(ctx, `UPDATE agents SET state = 'destroyed', destroyed_at = now(), updated_at = now() WHERE id = $1`, a.ID); err != nil {
			return a, fmt.Errorf("retire spent machine attempt %s: %w", a.Key, err)
		}
		return d.machine(ctx, t, size, region, image)
	}
	if err != nil {
		if errors.Is(err, provisioner.ErrNotReady) && m.ID != "" {
			// Launch destroyed (or tried to destroy) it: this key names
			// that machine for good, so the next try is a new attempt. The
			// id stays recorded for the reaper should the destroy have failed.
			if _, uerr := d.DB.DB.ExecContext(ctx, `UPDATE agents SET machine_id = $2, state = 'destroyed', destroyed_at = now(), updated_at = now() WHERE id = $1`, a.ID, m.ID); uerr != nil {
				return a, errors.Join(err, fmt.Errorf("retire machine %s: %w", m.ID, uerr))
			}
		}
		return a, err
	}
	a.MachineID, a.State = m.ID, "running"
	if _, err := d.DB.DB.ExecContext(ctx, `UPDATE agents SET machine_id = $2, state = 'running', updated_at = now() WHERE id = $1`, a.ID, m.ID); err != nil {
		return a, fmt.Errorf("record machine %s: %w", m.ID, err)
	}
	return a, nil
}

// Deploy provisions the environment's machine if needed, hands its agent
// the deployment and follows the agent's reports until the deploy succeeds
// or fails.
func (d *Deployer) Deploy(ctx context.Context, req reconciler.DeployRequest, progress func([]checks.Step)) (reconciler.DeployResult, error) {
	cfg := req.Config
	if want := cfg.Provider.Name; want != "" && d.ProviderName != "" && want != d.ProviderName {
		// Sizes, regions and images name one cloud's things: handing an
		// aws size to hetzner would fail later and less clearly.
		return reconciler.DeployResult{}, &reconciler.DeployError{
			Step:   StepProvision,
			Reason: fmt.Sprintf(".stagely.yml asks for %s machines; this Stagely server makes %s machines", want, d.ProviderName),
			Hint:   fmt.Sprintf("set provider.name to %s in .stagely.yml, or remove it to take the server's default", d.ProviderName),
		}
	}
	if len(cfg.Secrets) > 0 {
		// Deploying without them would start an app that lacks what it
		// was promised, and fail later, somewhere less clear.
		return reconciler.DeployResult{}, &reconciler.DeployError{
			Step:   StepProvision,
			Reason: fmt.Sprintf(".stagely.yml names secrets (%s), and this Stagely server has no secret store yet", strings.Join(cfg.Secrets, ", ")),
			Hint:   "remove secrets from .stagely.yml; pass non-secret settings under env",
		}
	}
	start := time.Now()
	prov := checks.Step{Name: StepProvision, State: checks.StepRunning, StartedAt: start}
	progress([]checks.Step{prov})
	if _, err := d.machine(ctx, req.Target, cfg.Provider.Size, cfg.Provider.Region, cfg.Provider.Image); err != nil {
		return reconciler.DeployResult{}, &reconciler.DeployError{
			Step: StepProvision, Reason: err.Error(), Hint: provisioner.Hint(err), Retryable: provisioner.Retryable(err),
		}
	}
	prov.State, prov.FinishedAt = checks.StepSucceeded, time.Now()

	spec := protocol.Deployment{
		EnvironmentID: strconv.FormatInt(req.EnvironmentID, 10),
		Generation:    req.Generation,
		Action:        protocol.ActionDeploy,
		SHA:           req.SHA,
		ComposeFiles:  cfg.Compose,
		Env:           cfg.Env,
		Health: protocol.Health{Path: cfg.Health.Path, Timeout: protocol.Duration(cfg.Health.Timeout),
			Interval: protocol.Duration(cfg.Health.Interval), ExpectStatus: cfg.Health.ExpectStatus},
		BuildTimeout: protocol.Duration(cfg.Build.Timeout),
	}
	var previews []checks.Preview
	for i, p := range cfg.Previews {
		host := d.PreviewHost(req.Hash, p.Name, i == 0)
		spec.Previews = append(spec.Previews, protocol.Preview{Name: p.Name, Service: p.Service, Port: p.Port, Host: host})
		previews = append(previews, checks.Preview{Name: p.Name, URL: d.PreviewURL(host) + trimSlash(p.Path)})
	}
	if err := d.hand(ctx, req.EnvironmentID, req.Generation, req.SHA, spec); err != nil {
		return reconciler.DeployResult{}, err
	}
	limit := d.AgentTimeout + cfg.Build.Timeout + cfg.Health.Timeout
	_, failed, err := d.follow(ctx, req.EnvironmentID, req.Generation, limit, func(agent []checks.Step) {
		progress(append([]checks.Step{prov}, agent...))
	}, "health")
	if err != nil {
		return reconciler.DeployResult{}, err
	}
	if failed != nil {
		return reconciler.DeployResult{}, &reconciler.DeployError{
			Step: failed.Name, Reason: failed.Message, Hint: "see the log below; push a fix or comment `/stagely redeploy`",
			LogTail: d.logTail(ctx, req.EnvironmentID, req.Generation),
		}
	}
	// A preview this deployment no longer has answers 404 from now on,
	// not 502 until the destroy. Best effort: a host left behind only
	// answers 502 until then.
	keep := map[string]bool{}
	for _, p := range spec.Previews {
		keep[p.Host] = true
	}
	_ = d.deleteRoutes(ctx, req.Target, keep)
	return reconciler.DeployResult{Previews: previews, LogTail: d.logTail(ctx, req.EnvironmentID, req.Generation)}, nil
}

func trimSlash(p string) string {
	if p == "/" {
		return ""
	}
	return p
}

// hand records the deployment for the agent to pick up and wakes its poll.
func (d *Deployer) hand(ctx context.Context, env, gen int64, sha string, spec protocol.Deployment) error {
	b, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	if _, err := d.DB.DB.ExecContext(ctx, `
INSERT INTO deployments (environment_id, generation, sha, status, agent_spec) VALUES ($1, $2, $3, 'in_progress', $4)
ON CONFLICT (environment_id, generation) DO UPDATE SET agent_spec = excluded.agent_spec`, env, gen, sha, b); err != nil {
		return fmt.Errorf("hand generation %d to the agent of environment %d: %w", gen, env, err)
	}
	if d.Bus != nil {
		_ = d.Bus.Publish(ctx, agentChannel(env), strconv.FormatInt(gen, 10))
	}
	return nil
}

type stepRow struct {
	Name, State, Message string
	Started              time.Time
	Finished             sql.NullTime
}

// follow reports the agent's steps for (env, gen) through fn until the
// step named last succeeds, any step fails, or limit passes without one.
func (d *Deployer) follow(ctx context.Context, env, gen int64, limit time.Duration, fn func([]checks.Step), last string) ([]checks.Step, *stepRow, error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wake := wakeOn(sctx, d.Bus, stepChannel(env))
	every := d.Recheck
	if every <= 0 {
		every = 500 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	seen := -1
	for {
		rows, err := d.DB.DB.QueryContext(ctx, `
SELECT name, state, message, started_at, finished_at FROM deployment_steps
 WHERE environment_id = $1 AND generation = $2 ORDER BY id`, env, gen)
		if err != nil {
			return nil, nil, fmt.Errorf("read steps of environment %d: %w", env, err)
		}
		var all []stepRow
		for rows.Next() {
			var r stepRow
			if err := rows.Scan(&r.Name, &r.State, &r.Message, &r.Started, &r.Finished); err != nil {
				rows.Close()
				return nil, nil, err
			}
			all = append(all, r)
		}
		rows.Close()
		steps, failed, done := merge(all, last)
		if len(all) != seen {
			seen = len(all)
			fn(steps)
		}
		if failed != nil || done {
			return steps, failed, nil
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-deadline.C:
			step := StepAgent
			if len(steps) > 0 {
				step = steps[len(steps)-1].Name
			}
			return steps, &stepRow{Name: step, Message: fmt.Sprintf("no report from the agent within %s", limit)}, nil
		case <-wake:
		case <-t.C:
		}
	}
}

// merge folds step reports (a step is reported when it starts and when it
// ends) into one entry per step, in order of first report.
func merge(rows []stepRow, last string) ([]checks.Step, *stepRow, bool) {
	var out []checks.Step
	index := map[string]int{}
	var failed *stepRow
	done := false
	for i := range rows {
		r := rows[i]
		st := checks.Step{Name: r.Name, State: checks.StepState(r.State), StartedAt: r.Started}
		if r.Finished.Valid {
			st.FinishedAt = r.Finished.Time
		}
		if j, ok := index[r.Name]; ok {
			out[j] = st
		} else {
			index[r.Name] = len(out)
			out = append(out, st)
		}
		if r.State == string(protocol.StepFailed) && failed == nil {
			failed = &rows[i]
		}
		if r.Name == last && r.State == string(protocol.StepSucceeded) {
			done = true
		}
	}
	return out, failed, done
}

func (d *Deployer) logTail(ctx context.Context, env, gen int64) string {
	var tail string
	_ = d.DB.DB.QueryRowContext(ctx, `SELECT log_tail FROM deployments WHERE environment_id = $1 AND generation = $2`, env, gen).Scan(&tail)
	return tail
}

// Destroy asks the agent to remove the environment's containers, volumes
// and images, then destroys its machine. An agent that does not answer in
// time does not keep the machine alive: the machine goes regardless.
func (d *Deployer) Destroy(ctx context.Context, t reconciler.Target) error {
	var machines []agentRow
	rows, err := d.DB.DB.QueryContext(ctx, `SELECT id, key, machine_id, state, provider FROM agents WHERE environment_id = $1 AND destroyed_at IS NULL`, t.EnvironmentID)
	if err != nil {
		return fmt.Errorf("machines of environment %d: %w", t.EnvironmentID, err)
	}
	for rows.Next() {
		var a agentRow
		if err := rows.Scan(&a.ID, &a.Key, &a.MachineID, &a.State, &a.Provider); err != nil {
			rows.Close()
			return err
		}
		machines = append(machines, a)
	}
	rows.Close()
	for _, a := range machines {
		if err := d.foreign(a, t.EnvironmentID); err != nil {
			return err
		}
	}
	if len(machines) == 0 {
		return nil
	}
	var gen int64
	if err := d.DB.DB.QueryRowContext(ctx, `SELECT desired_generation FROM environments WHERE id = $1`, t.EnvironmentID).Scan(&gen); err != nil {
		return fmt.Errorf("environment %d: %w", t.EnvironmentID, err)
	}
	spec := protocol.Deployment{EnvironmentID: strconv.FormatInt(t.EnvironmentID, 10), Generation: gen, Action: protocol.ActionDestroy}
	if err := d.hand(ctx, t.EnvironmentID, gen, "", spec); err != nil {
		return err
	}
	if _, _, err := d.follow(ctx, t.EnvironmentID, gen, d.AgentTimeout, func([]checks.Step) {}, "down"); err != nil {
		return err
	}
	if err := d.deleteRoutes(ctx, t, nil); err != nil {
		return err
	}
	for _, a := range machines {
		if a.MachineID == "" {
			// Recorded before a crash, maybe created: find it by its key.
			ms, err := d.Provider.List(ctx)
			if err != nil {
				// Retiring the row now would forget a machine that may run.
				return fmt.Errorf("find machine %s of environment %d: %w", a.Key, t.EnvironmentID, err)
			}
			for _, m := range ms {
				if m.Key == a.Key {
					a.MachineID = m.ID
				}
			}
		}
		if a.MachineID != "" {
			if err := d.Provider.Destroy(ctx, a.MachineID); err != nil {
				return fmt.Errorf("destroy machine %s of environment %d: %w", a.MachineID, t.EnvironmentID, err)
			}
		}
		if _, err := d.DB.DB.ExecContext(ctx, `UPDATE agents SET state = 'destroyed', destroyed_at = now(), updated_at = now() WHERE id = $1`, a.ID); err != nil {
			return err
		}
	}
	return nil
}

// deleteRoutes removes the hostnames the environment's deployments used,
// but those in keep.
func (d *Deployer) deleteRoutes(ctx context.Context, t reconciler.Target, keep map[string]bool) error {
	if d.Routes == nil {
		return nil
	}
	hosts := map[string]bool{d.PreviewHost(t.Hash, "", true): true}
	rows, err := d.DB.DB.QueryContext(ctx, `SELECT agent_spec FROM deployments WHERE environment_id = $1 AND agent_spec IS NOT NULL`, t.EnvironmentID)
	if err != nil {
		return fmt.Errorf("routes of environment %d: %w", t.EnvironmentID, err)
	}
	for rows.Next() {
		var b []byte
		var spec protocol.Deployment
		if rows.Scan(&b) == nil && json.Unmarshal(b, &spec) == nil {
			for _, p := range spec.Previews {
				if p.Host != "" {
					hosts[p.Host] = true
				}
			}
		}
	}
	rows.Close()
	for h := range hosts {
		if keep[h] {
			continue
		}
		if err := d.Routes.DeleteHost(ctx, h); err != nil {
			return fmt.Errorf("delete route %s: %w", h, err)
		}
	}
	return nil
}
