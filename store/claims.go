package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/uptrace/bun"
)

// ErrLeaseLost means another worker holds the environment now: the caller
// must stop working on it at once.
var ErrLeaseLost = errors.New("lease lost")

// Claim leases up to limit environments that have unhandled intent and are
// due, for owner. FOR UPDATE SKIP LOCKED lets any number of workers on any
// number of servers claim concurrently without waiting on each other; an
// expired lease (its worker died) is claimable again.
func Claim(ctx context.Context, db bun.IDB, owner string, lease time.Duration, limit int) ([]Environment, error) {
	var envs []Environment
	err := db.NewRaw(`
WITH c AS (
    SELECT id FROM environments
     WHERE intent_seq > handled_seq AND next_attempt_at <= now()
       AND (lease_expires_at IS NULL OR lease_expires_at < now())
     ORDER BY next_attempt_at
     LIMIT ?
     FOR UPDATE SKIP LOCKED)
UPDATE environments e
   SET lease_owner = ?, lease_expires_at = now() + make_interval(secs => ?)
  FROM c WHERE e.id = c.id
RETURNING e.*`, limit, owner, lease.Seconds()).Scan(ctx, &envs)
	if err != nil {
		return nil, fmt.Errorf("claim environments: %w", err)
	}
	return envs, nil
}

// Renew extends owner's lease on environment id.
func Renew(ctx context.Context, db bun.IDB, id int64, owner string, lease time.Duration) error {
	res, err := db.NewRaw(`
UPDATE environments SET lease_expires_at = now() + make_interval(secs => ?)
 WHERE id = ? AND lease_owner = ? AND lease_expires_at > now()`, lease.Seconds(), id, owner).Exec(ctx)
	return leaseResult(res, err, id)
}

// Release ends owner's lease. handledSeq is the intent_seq the worker read
// when it claimed: intents recorded since then keep the row pending. A
// non-zero retryIn leaves the work pending and due again after it.
func Release(ctx context.Context, db bun.IDB, id int64, owner string, handledSeq int64, retryIn time.Duration, lastErr string) error {
	q := `
UPDATE environments SET lease_owner = '', lease_expires_at = NULL, handled_seq = GREATEST(handled_seq, ?),
       attempts = 0, last_error = ?, updated_at = now()
 WHERE id = ? AND lease_owner = ?`
	args := []any{handledSeq, lastErr, id, owner}
	if retryIn > 0 {
		q = `
UPDATE environments SET lease_owner = '', lease_expires_at = NULL, attempts = attempts + 1, last_error = ?,
       next_attempt_at = now() + make_interval(secs => ?), updated_at = now()
 WHERE id = ? AND lease_owner = ?`
		args = []any{lastErr, retryIn.Seconds(), id, owner}
	}
	res, err := db.NewRaw(q, args...).Exec(ctx)
	return leaseResult(res, err, id)
}

// UpdateEnvironment applies set (a SQL SET list with ? placeholders) to
// environment id only while owner holds its lease, so a worker that lost
// its lease can never overwrite its successor's progress.
func UpdateEnvironment(ctx context.Context, db bun.IDB, id int64, owner, set string, args ...any) error {
	args = append(args, id, owner)
	res, err := db.NewRaw(`UPDATE environments SET `+set+`, updated_at = now() WHERE id = ? AND lease_owner = ?`, args...).Exec(ctx)
	return leaseResult(res, err, id)
}

func leaseResult(res interface{ RowsAffected() (int64, error) }, err error, id int64) error {
	if err != nil {
		return fmt.Errorf("environment %d: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("environment %d: %w", id, ErrLeaseLost)
	}
	return nil
}

func jsonb(v any) string {
	if v == nil {
		return "{}"
	}
	b, err := json.Marshal(v)
	if err != nil {
		return "{}"
	}
	return string(b)
}
