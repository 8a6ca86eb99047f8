package app

import (
	"context"
	"fmt"

	"github.com/uptrace/bun"
	"strings"

	"github.com/stagely-dev/stagely/store"
)

// InstallationHandler keeps installations and their repositories in
// Postgres. Uninstalling Stagely, or removing a repository from it,
// destroys that repository's previews: nothing may outlive Stagely's access.
type InstallationHandler struct{ *Base }

func (h *InstallationHandler) Handles() []string {
	return []string{"installation", "installation_repositories"}
}

func (h *InstallationHandler) Handle(ctx context.Context, eventType, deliveryID string, payload []byte) error {
	if eventType == "installation_repositories" {
		return h.repositories(ctx, deliveryID, payload)
	}
	var ev installationEvent
	if err := decode(payload, &ev); err != nil {
		return err
	}
	inst := ev.Installation
	if inst == nil || inst.ID == 0 {
		return errorf(ErrMalformed, "installation.%s without installation", ev.Action)
	}
	if inst.AppID != 0 && h.AppID != 0 && inst.AppID != h.AppID {
		return nil // another app's installation
	}
	d := store.Delivery{ID: deliveryID, Event: eventType, Action: ev.Action, InstallationID: inst.ID}
	switch ev.Action {
	case "created", "deleted", "suspend", "unsuspend", "new_permissions_accepted":
	default:
		return nil
	}
	return h.deliver(ctx, d, func(ctx context.Context, tx bun.Tx) ([]int64, error) {
		if _, err := tx.NewRaw(`
INSERT INTO installations (id, account_login, account_type) VALUES (?, ?, ?)
ON CONFLICT (id) DO UPDATE SET account_login = excluded.account_login, account_type = excluded.account_type,
    deleted_at = NULL, updated_at = now()`,
			inst.ID, inst.Account.Login, inst.Account.Type).Exec(ctx); err != nil {
			return nil, fmt.Errorf("record installation %d: %w", inst.ID, err)
		}
		var set string
		switch ev.Action {
		case "deleted":
			set = "deleted_at = now()"
		case "suspend":
			set = "suspended_at = now()"
		case "unsuspend":
			set = "suspended_at = NULL"
		}
		if set != "" {
			if _, err := tx.NewRaw(`UPDATE installations SET `+set+`, updated_at = now() WHERE id = ?`, inst.ID).Exec(ctx); err != nil {
				return nil, fmt.Errorf("update installation %d: %w", inst.ID, err)
			}
		}
		for _, r := range ev.Repositories {
			if err := store.EnsureRepository(ctx, tx, repoFromInstallation(inst, r)); err != nil {
				return nil, err
			}
		}
		if ev.Action == "deleted" {
			return destroyWhere(ctx, tx, "installation_id = ?", inst.ID)
		}
		return nil, nil
	})
}

func (h *InstallationHandler) repositories(ctx context.Context, deliveryID string, payload []byte) error {
	var ev installationRepositoriesEvent
	if err := decode(payload, &ev); err != nil {
		return err
	}
	inst := ev.Installation
	if inst == nil || inst.ID == 0 {
		return errorf(ErrMalformed, "installation_repositories.%s without installation", ev.Action)
	}
	if ev.Action != "added" && ev.Action != "removed" {
		return nil
	}
	d := store.Delivery{ID: deliveryID, Event: "installation_repositories", Action: ev.Action, InstallationID: inst.ID}
	return h.deliver(ctx, d, func(ctx context.Context, tx bun.Tx) ([]int64, error) {
		if _, err := tx.NewRaw(`
INSERT INTO installations (id, account_login, account_type) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING`,
			inst.ID, inst.Account.Login, inst.Account.Type).Exec(ctx); err != nil {
			return nil, fmt.Errorf("record installation %d: %w", inst.ID, err)
		}
		for _, r := range ev.RepositoriesAdded {
			if err := store.EnsureRepository(ctx, tx, repoFromInstallation(inst, r)); err != nil {
				return nil, err
			}
		}
		var touched []int64
		for _, r := range ev.RepositoriesRemoved {
			if _, err := tx.NewRaw(`UPDATE repositories SET removed_at = now(), updated_at = now() WHERE id = ?`, r.ID).Exec(ctx); err != nil {
				return nil, fmt.Errorf("remove repository %s: %w", r.FullName, err)
			}
			ids, err := destroyWhere(ctx, tx, "repository_id = ?", r.ID)
			if err != nil {
				return nil, err
			}
			touched = append(touched, ids...)
		}
		return touched, nil
	})
}

// destroyWhere sets every matching live environment's desired state to
// destroyed.
func destroyWhere(ctx context.Context, tx bun.Tx, where string, arg any) ([]int64, error) {
	var ids []int64
	err := tx.NewRaw(`
UPDATE environments SET desired_state = 'destroyed', desired_generation = desired_generation + 1,
       intent_seq = intent_seq + 1, next_attempt_at = now(), touched_at = now(), updated_at = now()
 WHERE `+where+` AND desired_state <> 'destroyed'
RETURNING id`, arg).Scan(ctx, &ids)
	if err != nil {
		return nil, fmt.Errorf("destroy environments: %w", err)
	}
	return ids, nil
}

// repoFromInstallation builds a RepoRef from the short repository objects
// installation events carry: full_name is owner/name, the owner is the
// installation's account.
func repoFromInstallation(inst *installation, r shortRepository) store.RepoRef {
	owner, name := inst.Account.Login, r.Name
	if o, n, ok := strings.Cut(r.FullName, "/"); ok {
		owner, name = o, n
	}
	return store.RepoRef{InstallationID: inst.ID, RepositoryID: r.ID, Owner: owner, Name: name, IsPrivate: r.Private}
}
