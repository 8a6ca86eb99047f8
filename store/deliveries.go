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
		var status string
		err := tx.NewRaw(`
INSERT INTO webhook_deliveries (delivery_id, event, action, installation_id, status)
VALUES (?, ?, ?, ?, 'processing')
ON CONFLICT (delivery_id) DO UPDATE
   SET attempts = webhook_deliveries.attempts + 1, status = 'processing', error = ''
 WHERE webhook_deliveries.status <> 'done'
RETURNING status`, d.ID, d.Event, d.Action, d.InstallationID).Scan(ctx, &status)
		if errors.Is(err, sql.ErrNoRows) {
			duplicate = true
			return nil
		}
		if err != nil {
			return fmt.Errorf("record delivery %s: %w", d.ID, err)
		}
		if err := fn(ctx, tx); err != nil {
			return err
		}
		_, err = tx.NewRaw(`UPDATE webhook_deliveries SET status = 'done', processed_at = now() WHERE delivery_id = ?`, d.ID).Exec(ctx)
		return err
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
