package reaper

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/stagely-dev/stagely/store"
)

// idleCond is true of an environment e idle past its TTL: it wants to run
// and has a TTL, and nobody pushed or commanded (touched_at) within it.
// The TTL is a preview's time unused, so it does not run while a deploy is
// under way, nor before its last deploy finished: a build may take longer
// than the shortest TTL (10 minutes against build.timeout's 3 hours), and
// reaping it then would destroy a preview nobody could use yet, every time.
const idleCond = `e.desired_state = 'running' AND e.ttl_seconds > 0
       AND e.touched_at < now() - make_interval(secs => e.ttl_seconds)
       AND e.observed_generation >= e.desired_generation
       AND NOT EXISTS (SELECT 1 FROM deployments d
                        WHERE d.environment_id = e.id AND d.finished_at >= now() - make_interval(secs => e.ttl_seconds))`

// idleQuery asks every environment idle past its TTL to be destroyed, and
// audits each, in one statement. The candidates are locked with SKIP
// LOCKED, so concurrent reapers (and a webhook writing the same row) never
// wait on each other, and the condition is checked again on the row as it
// is once locked: a push that moved touched_at on (and so extended the
// TTL) before the lock keeps its environment. A push after it simply asks
// for the preview again. desired_generation and intent_seq move on as a
// webhook's destroy would; reaped_* tell the reconciler why, so the
// comment says the preview was idle and how to bring it back.
const idleQuery = `
WITH due AS (
    SELECT e.id FROM environments e
     WHERE ` + idleCond + `
     ORDER BY e.touched_at
     LIMIT $1
     FOR UPDATE OF e SKIP LOCKED),
r AS (
    UPDATE environments e
       SET desired_state = 'destroyed', desired_generation = e.desired_generation + 1,
           intent_seq = e.intent_seq + 1, attempts = 0, next_attempt_at = now(),
           reaped_generation = e.desired_generation + 1, reaped_reason = $2, updated_at = now()
      FROM due
     WHERE e.id = due.id AND ` + idleCond + `
    RETURNING e.id, e.owner, e.repo, e.pr_number, e.desired_generation, e.ttl_seconds, e.touched_at),
a AS (
    INSERT INTO audit_logs (actor, action, environment_id, details)
    SELECT $3, $4, r.id, jsonb_build_object('generation', r.desired_generation,
           'ttl_seconds', r.ttl_seconds, 'touched_at', r.touched_at)
      FROM r)
SELECT id, owner, repo, pr_number, desired_generation, ttl_seconds, touched_at FROM r ORDER BY id`

// sweepIdle asks every environment idle past its TTL to be destroyed.
func (r *Reaper) sweepIdle(ctx context.Context) ([]Reaped, error) {
	rows, err := r.cfg.DB.DB.QueryContext(ctx, idleQuery, r.cfg.Batch, store.ReapedIdle, Actor, ActionIdle)
	if err != nil {
		return nil, fmt.Errorf("reap idle environments: %w", err)
	}
	var out []Reaped
	err = scanAll(rows, func(rows *sql.Rows) error {
		var e Reaped
		var owner, repo string
		var ttl int64
		var touched time.Time
		if err := rows.Scan(&e.EnvironmentID, &owner, &repo, &e.PR, &e.Generation, &ttl, &touched); err != nil {
			return err
		}
		e.Repo = owner + "/" + repo
		out = append(out, e)
		r.log.Info().Int64("environment", e.EnvironmentID).Str("repo", e.Repo).Int("pr", e.PR).
			Dur("ttl", time.Duration(ttl)*time.Second).Time("touched_at", touched).Int64("generation", e.Generation).
			Msg("idle past its TTL: destroying")
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("reap idle environments: %w", err)
	}
	for _, e := range out {
		r.wake(ctx, e.EnvironmentID)
	}
	return out, nil
}

// scanAll calls fn for each row and closes rows.
func scanAll(rows *sql.Rows, fn func(*sql.Rows) error) error {
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}
