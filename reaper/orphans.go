package reaper

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"

	"github.com/stagely-dev/stagely/provisioner"
	"github.com/stagely-dev/stagely/store"
)

// orphanLock is the pg_advisory_lock key under which one reaper at a time
// sweeps for orphans ("reaper" in ASCII), so two never destroy, and audit,
// the same machine.
const orphanLock = 0x726561706572

// keptQuery returns which of the machines ($1 ids, $2 keys) are not
// orphans. A machine is kept while an agents row that is not destroyed
// records it — by its id, or by its key while the id is still being
// waited for (the row is written before the cloud is asked, so a machine
// being created right now always has one) — and that row's environment
// still exists and has not finished being destroyed. A machine whose row
// was retired within the last $3 seconds is kept too: whoever retired it
// destroyed it, and the cloud is still catching up.
const keptQuery = `
SELECT m.id FROM unnest($1::text[], $2::text[]) AS m(id, key)
 WHERE EXISTS (
    SELECT 1 FROM agents a JOIN environments e ON e.id = a.environment_id
     WHERE (a.machine_id = m.id OR (m.key <> '' AND a.key = m.key AND a.machine_id = ''))
       AND ((a.destroyed_at IS NULL
             AND NOT (e.desired_state = 'destroyed' AND e.observed_generation >= e.desired_generation))
            OR a.destroyed_at > now() - make_interval(secs => $3)))`

// sweepOrphans destroys the provider's machines that no live environment
// records, unless another reaper is already sweeping.
func (r *Reaper) sweepOrphans(ctx context.Context) ([]provisioner.Machine, error) {
	if r.cfg.Provider == nil {
		return nil, nil
	}
	conn, err := r.cfg.DB.DB.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("reap orphaned machines: %w", err)
	}
	var mine bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1)`, orphanLock).Scan(&mine); err != nil || !mine {
		conn.Close()
		if err != nil {
			return nil, fmt.Errorf("reap orphaned machines: take the sweep lock: %w", err)
		}
		return nil, nil // another reaper is sweeping
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.ExecContext(uctx, `SELECT pg_advisory_unlock($1)`, orphanLock); err != nil {
			// A connection still holding the lock must not go back to the
			// pool: closing it releases the lock.
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		conn.Close()
	}()
	return r.orphans(ctx)
}

func (r *Reaper) orphans(ctx context.Context) ([]provisioner.Machine, error) {
	ms, err := r.cfg.Provider.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("reap orphaned machines: list machines: %w", err)
	}
	old := r.pastGrace(ms, r.cfg.Now())
	if len(old) == 0 {
		return nil, nil
	}
	ids, keys := make([]string, len(old)), make([]string, len(old))
	for i, m := range old {
		ids[i], keys[i] = m.ID, m.Key
	}
	rows, err := r.cfg.DB.DB.QueryContext(ctx, keptQuery, ids, keys, r.cfg.OrphanGrace.Seconds())
	if err != nil {
		return nil, fmt.Errorf("reap orphaned machines: find their environments: %w", err)
	}
	kept := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reap orphaned machines: %w", err)
		}
		kept[id] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reap orphaned machines: %w", err)
	}
	var out []provisioner.Machine
	var errs []error
	for _, m := range old {
		if kept[m.ID] {
			continue
		}
		if err := r.destroyOrphan(ctx, m); err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, m)
	}
	return out, errors.Join(errs...)
}

// pastGrace returns the machines in ms that exist and are older than
// OrphanGrace. A machine whose cloud does not say when it was made is timed
// from when this reaper first listed it.
func (r *Reaper) pastGrace(ms []provisioner.Machine, now time.Time) []provisioner.Machine {
	r.mu.Lock()
	defer r.mu.Unlock()
	listed := map[string]bool{}
	var out []provisioner.Machine
	for _, m := range ms {
		if m.ID == "" || m.State.Gone() {
			continue
		}
		listed[m.ID] = true
		born := m.Created
		if born.IsZero() {
			if _, ok := r.seen[m.ID]; !ok {
				r.seen[m.ID] = now
			}
			born = r.seen[m.ID]
		}
		if now.Sub(born) >= r.cfg.OrphanGrace {
			out = append(out, m)
		}
	}
	for id := range r.seen {
		if !listed[id] {
			delete(r.seen, id)
		}
	}
	return out
}

// destroyOrphan destroys machine m, retires any row that still calls it
// live (its environment is gone or destroyed), and audits it.
func (r *Reaper) destroyOrphan(ctx context.Context, m provisioner.Machine) error {
	if err := r.cfg.Provider.Destroy(ctx, m.ID); err != nil {
		return fmt.Errorf("destroy orphaned machine %s (key %q, environment %d): %w", m.ID, m.Key, m.EnvironmentID, err)
	}
	if _, err := r.cfg.DB.DB.ExecContext(ctx, `
UPDATE agents SET state = 'destroyed', destroyed_at = now(), updated_at = now()
 WHERE destroyed_at IS NULL AND (machine_id = $1 OR ($2 <> '' AND key = $2 AND machine_id = ''))`, m.ID, m.Key); err != nil {
		return fmt.Errorf("retire the record of orphaned machine %s: %w", m.ID, err)
	}
	details := map[string]any{"machine_id": m.ID, "key": m.Key, "state": m.State, "reason": "no live environment records it"}
	if !m.Created.IsZero() {
		details["created"] = m.Created
	}
	if err := store.Audit(ctx, r.cfg.DB, Actor, ActionOrphan, m.EnvironmentID, details); err != nil {
		return err
	}
	r.log.Info().Str("machine", m.ID).Str("key", m.Key).Int64("environment", m.EnvironmentID).
		Time("created", m.Created).Msg("no live environment records this machine: destroyed it")
	return nil
}
