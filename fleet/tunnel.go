package fleet

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/agent/protocol"
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
	var hash string
	var exchanged bool
	err := a.DB.DB.QueryRowContext(ctx, `
SELECT a.id, a.environment_id, e.hash, coalesce(a.token_hash = $1, false) FROM agents a JOIN environments e ON e.id = a.environment_id
 WHERE (a.token_hash = $1 OR a.bootstrap_hash = $1) AND a.destroyed_at IS NULL`, h).Scan(&id, &env, &hash, &exchanged)
	if errors.Is(err, sql.ErrNoRows) {
		return tunnel.Identity{}, fmt.Errorf("unknown or revoked token: %w", tunnel.ErrBadToken)
	}
	if err != nil {
		return tunnel.Identity{}, fmt.Errorf("authenticate agent: %w", err)
	}
	ident := tunnel.Identity{Agent: strconv.FormatInt(id, 10), Environment: strconv.FormatInt(env, 10)}
	if !exchanged {
		return ident, nil
	}
	hosts := map[string]bool{a.PrimaryHost(hash): true}
	var spec []byte
	if err := a.DB.DB.QueryRowContext(ctx, `
SELECT agent_spec FROM deployments WHERE environment_id = $1 AND agent_spec IS NOT NULL ORDER BY generation DESC LIMIT 1`,
		env).Scan(&spec); err == nil {
		var d protocol.Deployment
		if json.Unmarshal(spec, &d) == nil {
			for _, p := range d.Previews {
				if p.Host != "" {
					hosts[p.Host] = true
				}
			}
		}
	}
	for h := range hosts {
		ident.Hostnames = append(ident.Hostnames, h)
	}
	return ident, nil
}
