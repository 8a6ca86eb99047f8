package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/uptrace/bun"
)

// Delivery names one webhook delivery.
type Delivery struct {
	ID             string // X-GitHub-Delivery
	Event          string
	Action         string
	InstallationID int64
}

// Deliver records delivery d and runs fn in the same transaction, so a
// delivery is marked done exactly when its intent is durable. It returns
// duplicate=true, without calling fn, for a delivery that is already done:
// GitHub redelivers with the same X-GitHub-Delivery, and a redelivery of a
// done one must change nothing. A delivery whose fn failed is recorded as
// failed (outside the rolled-back transaction) and is retried when GitHub
// redelivers it. Two concurrent copies of one delivery serialise on its row.
func Deliver(ctx context.Context, db *bun.DB, d Delivery, fn func(ctx context.Context, tx bun.Tx) error) (duplicate bool, err error) {
	err = InTx(ctx, db, func(ctx context.Context, tx bun.Tx) error {
		// Marked done at once: if fn fails, the transaction rolls back and
		// the row with it, so "done" is only ever seen with its intent.
		var status string
		err := tx.Tx.QueryRowContext(ctx, `
INSERT INTO webhook_deliveries (delivery_id, event, action, installation_id, status, processed_at)
VALUES ($1, $2, $3, $4, 'done', now())
ON CONFLICT (delivery_id) DO UPDATE
   SET attempts = webhook_deliveries.attempts + 1, status = 'done', error = '', processed_at = now()
 WHERE webhook_deliveries.status <> 'done'
RETURNING status`, d.ID, d.Event, d.Action, d.InstallationID).Scan(&status)
		if errors.Is(err, sql.ErrNoRows) {
			duplicate = true
			return nil
		}
		if err != nil {
			return fmt.Errorf("record delivery %s: %w", d.ID, err)
		}
		return fn(ctx, tx)
	})
	if err != nil && !duplicate {
		// Keep a trace of the failure for operators; the redelivery retries.
		_, _ = db.NewRaw(`
INSERT INTO webhook_deliveries (delivery_id, event, action, installation_id, status, error)
VALUES (?, ?, ?, ?, 'failed', ?)
ON CONFLICT (delivery_id) DO UPDATE SET status = 'failed', error = excluded.error
 WHERE webhook_deliveries.status <> 'done'`, d.ID, d.Event, d.Action, d.InstallationID, truncate(err.Error(), 2000)).Exec(context.WithoutCancel(ctx))
	}
	return duplicate, err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// DeliverPullRequest is Deliver and RecordPullRequest in one statement, for
// the event that arrives most often: the delivery record, the repository
// and the environment's desired state are written atomically in a single
// round trip instead of seven. It returns the environment id when the
// desired state changed, and duplicate=true for a delivery already done.
func DeliverPullRequest(ctx context.Context, db *bun.DB, d Delivery, in PullRequestIntent) (envID int64, duplicate bool, err error) {
	hash, err := NewHash()
	if err != nil {
		return 0, false, err
	}
	var fresh bool
	var id sql.NullInt64
	err = db.DB.QueryRowContext(ctx, `
WITH d AS (
    INSERT INTO webhook_deliveries (delivery_id, event, action, installation_id, status, processed_at)
    VALUES ($1, $2, $3, $4, 'done', now())
    ON CONFLICT (delivery_id) DO UPDATE
       SET attempts = webhook_deliveries.attempts + 1, status = 'done', error = '', processed_at = now()
     WHERE webhook_deliveries.status <> 'done'
    RETURNING 1),
i AS (
    INSERT INTO installations (id, account_login) SELECT $4, $5 FROM d ON CONFLICT (id) DO NOTHING),
n AS (
    INSERT INTO repositories (id, installation_id, owner, name, is_private)
    SELECT $6, $4, $5, $7, $8 FROM d ON CONFLICT (id) DO NOTHING),
u AS (
    UPDATE repositories SET installation_id = $4, owner = $5, name = $7, is_private = $8, removed_at = NULL, updated_at = now()
     WHERE id = $6 AND EXISTS (SELECT 1 FROM d)
       AND (installation_id, owner, name, is_private, removed_at)
           IS DISTINCT FROM ($4::bigint, $5::text, $7::text, $8::boolean, NULL::timestamptz)),
e AS (
    INSERT INTO environments (repository_id, installation_id, owner, repo, pr_number, hash, head_repo, is_fork,
                              pr_updated_at, desired_state, desired_sha)
    SELECT $6, $4, $5, $7, $9, $10, $11, $12, $13, $14, $15 FROM d
    ON CONFLICT (repository_id, pr_number) DO UPDATE SET
        desired_state = excluded.desired_state, desired_sha = excluded.desired_sha,
        installation_id = excluded.installation_id, owner = excluded.owner, repo = excluded.repo,
        head_repo = excluded.head_repo, is_fork = excluded.is_fork, pr_updated_at = excluded.pr_updated_at,
        -- A fork's approval is for the commit a maintainer reviewed: a
        -- push asks for another.
        is_fork_approved = environments.is_fork_approved AND environments.desired_sha = excluded.desired_sha,
        desired_generation = environments.desired_generation + 1, intent_seq = environments.intent_seq + 1,
        attempts = 0, next_attempt_at = now(), touched_at = now(), updated_at = now()
    WHERE excluded.pr_updated_at >= environments.pr_updated_at
      AND (environments.desired_state, environments.desired_sha) IS DISTINCT FROM (excluded.desired_state, excluded.desired_sha)
    RETURNING id)
SELECT EXISTS (SELECT 1 FROM d), (SELECT id FROM e)`,
		d.ID, d.Event, d.Action, in.Repo.InstallationID, in.Repo.Owner, in.Repo.RepositoryID, in.Repo.Name, in.Repo.IsPrivate,
		in.PRNumber, hash, in.HeadRepo, in.IsFork, in.UpdatedAt, in.Desired, in.HeadSHA).Scan(&fresh, &id)
	if err != nil {
		err = fmt.Errorf("record %s.%s delivery %s for %s/%s#%d: %w", d.Event, d.Action, d.ID, in.Repo.Owner, in.Repo.Name, in.PRNumber, err)
		_, _ = db.DB.ExecContext(context.WithoutCancel(ctx), `
INSERT INTO webhook_deliveries (delivery_id, event, action, installation_id, status, error)
VALUES ($1, $2, $3, $4, 'failed', $5)
ON CONFLICT (delivery_id) DO UPDATE SET status = 'failed', error = excluded.error
 WHERE webhook_deliveries.status <> 'done'`, d.ID, d.Event, d.Action, d.InstallationID, truncate(err.Error(), 2000))
		return 0, false, err
	}
	return id.Int64, !fresh, nil
}
