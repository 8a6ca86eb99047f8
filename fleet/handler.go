package fleet

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/agent/protocol"
)

// Tarballs fetches a repository's source at a commit; the server backs it
// with the GitHub API, so the agent never holds a GitHub token.
type Tarballs interface {
	Tarball(ctx context.Context, installationID int64, owner, repo, sha string) (io.ReadCloser, error)
}

// Bus is how the handler and the Deployer wake each other: a new
// deployment for an agent, a new step report for a waiting deployer.
type Bus interface {
	Publish(ctx context.Context, channel, msg string) error
	Subscribe(ctx context.Context, channel string, fn func(msg string)) error
}

// wakeOn returns a channel that receives (without queueing more than one)
// whenever something is published on channel, until ctx ends. With no bus
// it never receives: the caller's polling alone finds the change.
func wakeOn(ctx context.Context, bus Bus, channel string) <-chan struct{} {
	wake := make(chan struct{}, 1)
	if bus != nil {
		_ = bus.Subscribe(ctx, channel, func(string) {
			select {
			case wake <- struct{}{}:
			default:
			}
		})
	}
	return wake
}

// Handler answers agents' control calls from Postgres.
type Handler struct {
	DB       *bun.DB
	Bus      Bus
	Tarballs Tarballs
	// Recheck is how often a long poll looks again without a wake-up.
	Recheck time.Duration
}

var _ protocol.Handler = (*Handler)(nil)

func agentChannel(env int64) string { return "stagely:agent:" + strconv.FormatInt(env, 10) }
func stepChannel(env int64) string  { return "stagely:steps:" + strconv.FormatInt(env, 10) }

// hashToken is how tokens are kept: only their SHA-256, so a leaked
// database holds no usable token.
func hashToken(t string) string {
	s := sha256.Sum256([]byte(t))
	return hex.EncodeToString(s[:])
}

func (h *Handler) Exchange(ctx context.Context, req protocol.ExchangeRequest) (protocol.ExchangeResponse, error) {
	if req.BootstrapToken == "" || len(req.AgentToken) < 32 {
		return protocol.ExchangeResponse{}, fmt.Errorf("exchange: tokens missing or too short: %w", protocol.ErrBadRequest)
	}
	var id, env int64
	err := h.DB.DB.QueryRowContext(ctx, `
UPDATE agents SET token_hash = $2, hostname = $3, version = $4, last_seen_at = now(), updated_at = now()
 WHERE bootstrap_hash = $1 AND destroyed_at IS NULL AND (token_hash IS NULL OR token_hash = $2)
RETURNING id, environment_id`, hashToken(req.BootstrapToken), hashToken(req.AgentToken), req.Agent.Hostname, req.Agent.Version).Scan(&id, &env)
	if errors.Is(err, sql.ErrNoRows) {
		var used bool
		if err := h.DB.DB.QueryRowContext(ctx, `SELECT true FROM agents WHERE bootstrap_hash = $1 AND destroyed_at IS NULL`,
			hashToken(req.BootstrapToken)).Scan(&used); err == nil && used {
			return protocol.ExchangeResponse{}, protocol.ErrTokenUsed
		}
		return protocol.ExchangeResponse{}, protocol.ErrUnauthorized
	}
	if err != nil {
		return protocol.ExchangeResponse{}, fmt.Errorf("exchange bootstrap token: %w", err)
	}
	return protocol.ExchangeResponse{AgentID: strconv.FormatInt(id, 10), EnvironmentID: strconv.FormatInt(env, 10)}, nil
}

func (h *Handler) Authenticate(ctx context.Context, token string) (protocol.Identity, error) {
	var id, env int64
	err := h.DB.DB.QueryRowContext(ctx, `
UPDATE agents SET last_seen_at = now() WHERE token_hash = $1 AND destroyed_at IS NULL RETURNING id, environment_id`,
		hashToken(token)).Scan(&id, &env)
	if errors.Is(err, sql.ErrNoRows) {
		return protocol.Identity{}, protocol.ErrUnauthorized
	}
	if err != nil {
		return protocol.Identity{}, fmt.Errorf("authenticate agent: %w", err)
	}
	return protocol.Identity{AgentID: strconv.FormatInt(id, 10), EnvironmentID: strconv.FormatInt(env, 10)}, nil
}

func envOf(id protocol.Identity) (int64, error) {
	env, err := strconv.ParseInt(id.EnvironmentID, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("agent %s: environment %q: %w", id.AgentID, id.EnvironmentID, protocol.ErrBadRequest)
	}
	return env, nil
}

// Poll answers with the newest deployment handed to the agent's
// environment past after, waiting for one until ctx ends.
func (h *Handler) Poll(ctx context.Context, id protocol.Identity, after int64) (*protocol.Deployment, error) {
	env, err := envOf(id)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wake := wakeOn(sctx, h.Bus, agentChannel(env))
	every := h.Recheck
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		var spec []byte
		err := h.DB.DB.QueryRowContext(ctx, `
SELECT agent_spec FROM deployments
 WHERE environment_id = $1 AND agent_spec IS NOT NULL AND generation > $2
 ORDER BY generation DESC LIMIT 1`, env, after).Scan(&spec)
		switch {
		case err == nil:
			var d protocol.Deployment
			if err := json.Unmarshal(spec, &d); err != nil {
				return nil, fmt.Errorf("deployment of environment %d: %w", env, err)
			}
			return &d, nil
		case !errors.Is(err, sql.ErrNoRows):
			if ctx.Err() != nil {
				return nil, nil
			}
			return nil, fmt.Errorf("poll for environment %d: %w", env, err)
		}
		select {
		case <-ctx.Done():
			return nil, nil
		case <-wake:
		case <-t.C:
		}
	}
}

func (h *Handler) Source(ctx context.Context, id protocol.Identity, req protocol.SourceRequest) (protocol.SourceInfo, io.ReadCloser, error) {
	env, err := envOf(id)
	if err != nil {
		return protocol.SourceInfo{}, nil, err
	}
	var inst int64
	var owner, repo, sha string
	err = h.DB.DB.QueryRowContext(ctx, `
SELECT e.installation_id, e.owner, e.repo, d.sha FROM deployments d JOIN environments e ON e.id = d.environment_id
 WHERE d.environment_id = $1 AND d.generation = $2 AND d.sha <> ''`, env, req.Generation).Scan(&inst, &owner, &repo, &sha)
	if errors.Is(err, sql.ErrNoRows) {
		return protocol.SourceInfo{}, nil, protocol.ErrNotFound
	}
	if err != nil {
		return protocol.SourceInfo{}, nil, fmt.Errorf("source of environment %d generation %d: %w", env, req.Generation, err)
	}
	body, err := h.Tarballs.Tarball(ctx, inst, owner, repo, sha)
	if err != nil {
		return protocol.SourceInfo{}, nil, fmt.Errorf("tarball of %s/%s@%s: %w", owner, repo, sha, err)
	}
	return protocol.SourceInfo{StripTopLevel: true, Gzip: true}, body, nil
}

// An agent runs the pull request's code, so what it reports is checked
// like any untrusted input: step reports decide a deploy and each costs a
// Check Run update on GitHub, whose rate limit the whole installation
// shares, and their names and messages are shown in the check.
const (
	// maxStepReports bounds the reports of one step of one generation:
	// one when it starts and one when it ends, and room for repeats of a
	// report whose answer was lost.
	maxStepReports = 4
	// maxStepMessage bounds a step's message, in characters.
	maxStepMessage = 16 << 10
)

// agentSteps are the steps an agent reports (agent.Step*): their names
// are shown as Stagely's own in the Check Run.
var agentSteps = map[string]bool{"source": true, "compose": true, "up": true, "health": true, "down": true}

func (h *Handler) Step(ctx context.Context, id protocol.Identity, r protocol.StepReport) error {
	env, err := envOf(id)
	if err != nil {
		return err
	}
	if !agentSteps[r.Name] {
		return fmt.Errorf("step %.40q: no such step: %w", r.Name, protocol.ErrBadRequest)
	}
	switch r.State {
	case protocol.StepRunning, protocol.StepSucceeded, protocol.StepFailed:
	default:
		return fmt.Errorf("step %s: state %.20q: %w", r.Name, r.State, protocol.ErrBadRequest)
	}
	var finished *time.Time
	if !r.Finished.IsZero() {
		finished = &r.Finished
	}
	// Only a generation handed to an agent has steps: a report for one
	// yet to come would decide that deploy, even on another machine.
	res, err := h.DB.DB.ExecContext(ctx, `
INSERT INTO deployment_steps (environment_id, generation, name, state, message, started_at, finished_at)
SELECT $1, $2, $3, $4, left($5, $8), $6, $7
 WHERE EXISTS (SELECT 1 FROM deployments WHERE environment_id = $1 AND generation = $2 AND agent_spec IS NOT NULL)
   AND (SELECT count(*) FROM deployment_steps WHERE environment_id = $1 AND generation = $2 AND name = $3) < $9`,
		env, r.Generation, r.Name, string(r.State), r.Message, r.Started, finished, maxStepMessage, maxStepReports)
	if err != nil {
		return fmt.Errorf("record step %s of environment %d: %w", r.Name, env, err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		if !h.handed(ctx, env, r.Generation) {
			return fmt.Errorf("step %s of environment %d generation %d, which was not handed out: %w", r.Name, env, r.Generation, protocol.ErrNotFound)
		}
		// Past its reports' bound: dropped, and answered as landed, or
		// the agent would repeat it for ever.
		return nil
	}
	if h.Bus != nil {
		_ = h.Bus.Publish(ctx, stepChannel(env), r.Name)
	}
	return nil
}

// handed reports whether generation gen of env was handed to its agent.
func (h *Handler) handed(ctx context.Context, env, gen int64) bool {
	var ok bool
	err := h.DB.DB.QueryRowContext(ctx, `
SELECT EXISTS (SELECT 1 FROM deployments WHERE environment_id = $1 AND generation = $2 AND agent_spec IS NOT NULL)`, env, gen).Scan(&ok)
	return err == nil && ok
}

// maxLogTail is how much of a deployment's log is kept for the Check Run.
const maxLogTail = 32 << 10

func (h *Handler) Logs(ctx context.Context, id protocol.Identity, req protocol.LogsRequest, lines []protocol.LogLine) error {
	env, err := envOf(id)
	if err != nil {
		return err
	}
	var b strings.Builder
	for _, l := range lines {
		if l.Service != "" {
			b.WriteString(l.Service + " | ")
		}
		b.WriteString(l.Text)
		b.WriteByte('\n')
	}
	if _, err := h.DB.DB.ExecContext(ctx, `
UPDATE deployments SET log_tail = right(log_tail || $3, $4) WHERE environment_id = $1 AND generation = $2 AND agent_spec IS NOT NULL`,
		env, req.Generation, b.String(), maxLogTail); err != nil {
		return fmt.Errorf("record logs of environment %d: %w", env, err)
	}
	return nil
}
