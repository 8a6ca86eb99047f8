package app

import (
	"context"
	"fmt"

	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/store"
)

// RepositoryHandler follows a repository that is renamed or transferred.
// It keeps its id, and the workers reach GitHub with the names (and the
// installation) its environments record: with the old ones, GitHub only
// redirects until another repository takes the name, and a repository
// moved to another installation is out of the old one's reach.
type RepositoryHandler struct{ *Base }

func (h *RepositoryHandler) Handles() []string { return []string{"repository"} }

func (h *RepositoryHandler) Handle(ctx context.Context, eventType, deliveryID string, payload []byte) error {
	var ev envelope
	if err := decode(payload, &ev); err != nil {
		return err
	}
	if ev.Action != "renamed" && ev.Action != "transferred" {
		return nil
	}
	if ev.installationID() == 0 {
		return ignoreNotInstalled(ctx)
	}
	if ev.Repository == nil {
		return errorf(ErrMalformed, "%s.%s without repository", eventType, ev.Action)
	}
	r := repoRef(ev.installationID(), ev.Repository)
	d := store.Delivery{ID: deliveryID, Event: eventType, Action: ev.Action, InstallationID: r.InstallationID}
	return h.deliver(ctx, d, func(ctx context.Context, tx bun.Tx) ([]int64, error) {
		if err := store.EnsureRepository(ctx, tx, r); err != nil {
			return nil, err
		}
		if _, err := tx.NewRaw(`
UPDATE environments SET installation_id = ?, owner = ?, repo = ?, updated_at = now()
 WHERE repository_id = ? AND (installation_id, owner, repo) IS DISTINCT FROM (?::bigint, ?::text, ?::text)`,
			r.InstallationID, r.Owner, r.Name, r.RepositoryID, r.InstallationID, r.Owner, r.Name).Exec(ctx); err != nil {
			return nil, fmt.Errorf("follow repository %s/%s: %w", r.Owner, r.Name, err)
		}
		return nil, nil
	})
}
