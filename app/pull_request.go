package app

import (
	"context"

	"github.com/stagely-dev/stagely/store"
)

// PullRequestHandler turns a pull request's life into desired state:
// opened, reopened and pushed → running at the head SHA; closed → destroyed.
type PullRequestHandler struct{ *Base }

func (h *PullRequestHandler) Handles() []string { return []string{"pull_request"} }

func (h *PullRequestHandler) Handle(ctx context.Context, eventType, deliveryID string, payload []byte) error {
	var ev pullRequestEvent
	if err := decode(payload, &ev); err != nil {
		return err
	}
	var desired string
	switch ev.Action {
	case "opened", "reopened", "synchronize":
		desired = store.DesiredRunning
	case "closed":
		desired = store.DesiredDestroyed
	default:
		return nil
	}
	if ev.installationID() == 0 {
		return ignoreNotInstalled(ctx)
	}
	pr, repo := ev.PullRequest, ev.Repository
	if pr == nil || repo == nil || pr.Number == 0 || pr.Head.SHA == "" {
		return errorf(ErrMalformed, "pull_request.%s without pull_request number, head SHA or repository", ev.Action)
	}
	in := store.PullRequestIntent{
		Repo:      repoRef(ev.installationID(), repo),
		PRNumber:  pr.Number,
		HeadSHA:   pr.Head.SHA,
		Desired:   desired,
		UpdatedAt: pr.UpdatedAt,
		// A head repository that is not the base repository is a fork; a
		// deleted fork has no head repository at all and counts as one.
		IsFork: pr.Head.Repo == nil || pr.Head.Repo.ID != repo.ID,
	}
	if pr.Head.Repo != nil {
		in.HeadRepo = pr.Head.Repo.FullName
	}
	d := store.Delivery{ID: deliveryID, Event: eventType, Action: ev.Action, InstallationID: in.Repo.InstallationID}
	id, dup, err := store.DeliverPullRequest(ctx, h.DB, d, in)
	if err != nil {
		return err
	}
	if !dup && id != 0 {
		h.wake(ctx, id)
	}
	return nil
}

func repoRef(installationID int64, r *repository) store.RepoRef {
	return store.RepoRef{
		InstallationID: installationID,
		RepositoryID:   r.ID,
		Owner:          r.Owner.Login,
		Name:           r.Name,
		IsPrivate:      r.Private,
	}
}
