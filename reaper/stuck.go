package reaper

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/stagely-dev/stagely/store"
)

// stuckQuery finds environments that have not reached their desired
// generation and show no progress for $1 seconds — no write to the
// environment or to any of its deployments — although a worker holds them
// (alive but wedged, or dead with its lease lapsed) or nobody will claim
// them again (no pending intent). One merely waiting its turn in the queue
// is not stuck. Each is released from its worker (whose lease renewal then
// fails, which stops it) and made due again, with its intent moved on,
// after $8 seconds (Config.Takeover), once that worker has stopped.
//
// The first time a running generation is stuck it is retried
// (stuck_retry); stuck again with no progress since, it is marked stuck,
// and the reconciler reports the deployment failed instead of deploying.
// A stuck destroy is only retried: destroy wins, and its reason (idle,
// say) is kept for the comment. The statement re-checks its condition on
// the locked row and audits what it did, so two reapers mark once.
const stuckQuery = `
WITH due AS (
    SELECT e.id FROM environments e
     WHERE e.desired_generation > e.observed_generation
       AND (e.lease_owner <> '' OR e.intent_seq <= e.handled_seq)
       AND e.updated_at < now() - make_interval(secs => $1)
       AND NOT EXISTS (SELECT 1 FROM deployments d
                        WHERE d.environment_id = e.id AND d.updated_at >= now() - make_interval(secs => $1))
     ORDER BY e.updated_at
     LIMIT $2
     FOR UPDATE OF e SKIP LOCKED),
r AS (
    UPDATE environments e
       SET reaped_reason = CASE
               WHEN e.desired_state <> 'running' THEN e.reaped_reason
               WHEN e.reaped_generation = e.desired_generation AND e.reaped_reason IN ($3, $4) THEN $4
               ELSE $3 END,
           reaped_generation = CASE WHEN e.desired_state <> 'running' THEN e.reaped_generation ELSE e.desired_generation END,
           lease_owner = '', lease_expires_at = NULL,
           intent_seq = e.intent_seq + 1, attempts = 0, next_attempt_at = now() + make_interval(secs => $8),
           updated_at = now()
      FROM due
     WHERE e.id = due.id AND e.desired_generation > e.observed_generation
       AND (e.lease_owner <> '' OR e.intent_seq <= e.handled_seq)
       AND e.updated_at < now() - make_interval(secs => $1)
    RETURNING e.id, e.owner, e.repo, e.pr_number, e.desired_generation, e.desired_state, e.last_error,
              CASE WHEN e.desired_state = 'running' AND e.reaped_reason = $4 THEN $6 ELSE $5 END AS action),
a AS (
    INSERT INTO audit_logs (actor, action, environment_id, details)
    SELECT $7, r.action, r.id, jsonb_build_object('generation', r.desired_generation,
           'desired_state', r.desired_state, 'stuck_after_seconds', $1::float8, 'last_error', r.last_error)
      FROM r)
SELECT id, owner, repo, pr_number, desired_generation, desired_state, last_error, action FROM r ORDER BY id`

// sweepStuck retries stuck environments, or has them reported failed.
func (r *Reaper) sweepStuck(ctx context.Context) (retried, failed []Reaped, err error) {
	rows, err := r.cfg.DB.DB.QueryContext(ctx, stuckQuery, r.cfg.StuckAfter.Seconds(), r.cfg.Batch,
		store.ReapedStuckRetry, store.ReapedStuck, ActionStuckRetry, ActionStuck, Actor, r.cfg.Takeover.Seconds())
	if err != nil {
		return nil, nil, fmt.Errorf("reap stuck environments: %w", err)
	}
	err = scanAll(rows, func(rows *sql.Rows) error {
		var e Reaped
		var owner, repo, desired, lastErr, action string
		if err := rows.Scan(&e.EnvironmentID, &owner, &repo, &e.PR, &e.Generation, &desired, &lastErr, &action); err != nil {
			return err
		}
		e.Repo = owner + "/" + repo
		msg := "no progress past the deadline: retrying"
		if action == ActionStuck {
			failed = append(failed, e)
			msg = "no progress past the deadline after a retry: reporting it failed"
		} else {
			retried = append(retried, e)
		}
		r.log.Warn().Int64("environment", e.EnvironmentID).Str("repo", e.Repo).Int("pr", e.PR).
			Int64("generation", e.Generation).Str("desired", desired).Str("last_error", lastErr).
			Dur("stuck_after", r.cfg.StuckAfter).Msg(msg)
		return nil
	})
	if err != nil {
		return retried, failed, fmt.Errorf("reap stuck environments: %w", err)
	}
	// No wake-up: they are not due until Takeover has passed, and the
	// reconcilers' poll finds them then.
	return retried, failed, nil
}
