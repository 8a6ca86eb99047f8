package fleet

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/agent/protocol"
	"github.com/stagely-dev/stagely/store"
	"github.com/stagely-dev/stagely/tunnel"
)

// TunnelAuth admits agents to the proxy's tunnel. An agent token grants
// the hostnames of its own environment's previews and nothing else; a
// bootstrap token grants none, only the control stream on which the agent
// trades it for an agent token.
type TunnelAuth struct {
	DB *bun.DB
	// PrimaryHost is an environment's main preview hostname, from its hash.
	PrimaryHost func(hash string) string
}

var _ tunnel.Authenticator = (*TunnelAuth)(nil)

func (a *TunnelAuth) Authenticate(ctx context.Context, token string) (tunnel.Identity, error) {
	h := hashToken(token)
	var id, env int64
	var hash, desired string
	var exchanged bool
	err := a.DB.DB.QueryRowContext(ctx, `
SELECT a.id, a.environment_id, e.hash, e.desired_state, coalesce(a.token_hash = $1, false) FROM agents a JOIN environments e ON e.id = a.environment_id
 WHERE (a.token_hash = $1 OR a.bootstrap_hash = $1) AND a.destroyed_at IS NULL`, h).Scan(&id, &env, &hash, &desired, &exchanged)
	if errors.Is(err, sql.ErrNoRows) {
		return tunnel.Identity{}, fmt.Errorf("unknown or revoked token: %w", tunnel.ErrBadToken)
	}
	if err != nil {
		return tunnel.Identity{}, fmt.Errorf("authenticate agent: %w", err)
	}
	ident := tunnel.Identity{Agent: strconv.FormatInt(id, 10), Environment: strconv.FormatInt(env, 10)}
	if !exchanged {
		// The bootstrap token stays in the machine's user data, readable
		// long after the exchange: its session is one of its own, which
		// never replaces the agent's (the proxy keeps one session an
		// agent, the newest).
		ident.Agent = "bootstrap-" + ident.Agent
		return ident, nil
	}
	// An environment being destroyed serves nothing: its routes are
	// deleted before its machine goes, and an agent that reconnects in
	// between would publish them again, to answer 502 instead of 404. It
	// keeps its control calls, on which it takes its containers down.
	if desired != store.DesiredRunning {
		return ident, nil
	}
	var spec []byte
	err = a.DB.DB.QueryRowContext(ctx, `
SELECT agent_spec FROM deployments WHERE environment_id = $1 AND agent_spec IS NOT NULL ORDER BY generation DESC LIMIT 1`,
		env).Scan(&spec)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return tunnel.Identity{}, fmt.Errorf("previews of environment %d: %w", env, err)
	}
	ident.Hostnames = a.hosts(hash, spec)
	return ident, nil
}

// hosts returns an environment's preview hostnames: its primary host and
// those of spec, its latest deployment as handed to the agent (nil if
// none).
func (a *TunnelAuth) hosts(hash string, spec []byte) []string {
	hosts := map[string]bool{a.PrimaryHost(hash): true}
	var d protocol.Deployment
	if spec != nil && json.Unmarshal(spec, &d) == nil {
		for _, p := range d.Previews {
			if p.Host != "" {
				hosts[p.Host] = true
			}
		}
	}
	out := make([]string, 0, len(hosts))
	for h := range hosts {
		out = append(out, h)
	}
	return out
}

// HostTable is the part of the proxy's route table that PrimeRoutes
// writes.
type HostTable interface {
	PutHost(ctx context.Context, host, environment, agent string, ttl time.Duration) error
}

// PrimeRoutes puts into routes the hostnames of every environment that
// wants to run and has an enrolled machine. A route table kept in memory
// (single-node mode) starts empty: without this, after a restart every
// preview would answer "no preview here" (404) until its agent
// reconnected; primed, it answers "not reachable right now" (502), which
// is the truth. The entries last until the environment's destroy deletes
// them, or ttl passes (0: no end); an agent's reconnect refreshes them.
func (a *TunnelAuth) PrimeRoutes(ctx context.Context, routes HostTable, ttl time.Duration) (int, error) {
	rows, err := a.DB.DB.QueryContext(ctx, `
SELECT a.id, a.environment_id, e.hash, d.agent_spec FROM agents a JOIN environments e ON e.id = a.environment_id
  LEFT JOIN LATERAL (SELECT agent_spec FROM deployments WHERE environment_id = e.id AND agent_spec IS NOT NULL
                      ORDER BY generation DESC LIMIT 1) d ON true
 WHERE a.destroyed_at IS NULL AND a.token_hash IS NOT NULL AND e.desired_state = 'running'`)
	if err != nil {
		return 0, fmt.Errorf("prime routes: %w", err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var agent, env int64
		var hash string
		var spec []byte
		if err := rows.Scan(&agent, &env, &hash, &spec); err != nil {
			return n, fmt.Errorf("prime routes: %w", err)
		}
		for _, h := range a.hosts(hash, spec) {
			if err := routes.PutHost(ctx, h, strconv.FormatInt(env, 10), strconv.FormatInt(agent, 10), ttl); err != nil {
				return n, fmt.Errorf("prime route %s: %w", h, err)
			}
			n++
		}
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("prime routes: %w", err)
	}
	return n, nil
}
