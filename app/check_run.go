package app

import (
	"context"
	"fmt"

	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/store"
)

// CheckRunHandler turns the Check Run's buttons (requested_action) and
// "Re-run" (rerequested) into the commands they stand for.
type CheckRunHandler struct{ *Base }

func (h *CheckRunHandler) Handles() []string { return []string{"check_run"} }

func (h *CheckRunHandler) Handle(ctx context.Context, eventType, deliveryID string, payload []byte) error {
	var ev checkRunEvent
	if err := decode(payload, &ev); err != nil {
		return err
	}
	var name, source string
	switch ev.Action {
	case "requested_action":
		source = store.SourceButton
		if ev.RequestedAction == nil {
			return errorf(ErrMalformed, "check_run.requested_action without requested_action")
		}
		switch id := ev.RequestedAction.Identifier; id {
		case "redeploy", "destroy", "deploy":
			name = id
		default:
			return nil
		}
	case "rerequested":
		source, name = store.SourceRerequest, "redeploy"
	default:
		return nil
	}
	if h.AppID != 0 && ev.CheckRun.App.ID != 0 && ev.CheckRun.App.ID != h.AppID {
		return nil // another app's check run
	}
	prNumber := prOfCheckRun(ev.CheckRun.ExternalID)
	if prNumber == 0 && len(ev.CheckRun.PullRequests) > 0 {
		prNumber = ev.CheckRun.PullRequests[0].Number
	}
	if prNumber == 0 {
		return nil // not one of ours, or its pull request is gone
	}
	if ev.installationID() == 0 {
		return ignoreNotInstalled(ctx)
	}
	if ev.Repository == nil {
		return errorf(ErrMalformed, "%s.%s without repository", eventType, ev.Action)
	}
	in := store.CommandIntent{
		Repo:       repoRef(ev.installationID(), ev.Repository),
		PRNumber:   prNumber,
		DeliveryID: deliveryID,
		Source:     source,
		Actor:      ev.Sender.Login,
		Name:       name,
	}
	d := store.Delivery{ID: deliveryID, Event: eventType, Action: ev.Action, InstallationID: in.Repo.InstallationID}
	return h.deliver(ctx, d, func(ctx context.Context, tx bun.Tx) ([]int64, error) {
		id, err := store.RecordCommand(ctx, tx, in)
		return []int64{id}, err
	})
}

// ExternalID is the external_id Stagely gives a Check Run: it names the
// pull request, because GitHub leaves pull_requests empty for forks.
func ExternalID(pr int, generation int64) string {
	return fmt.Sprintf("stagely:pr-%d:gen-%d", pr, generation)
}

// prOfCheckRun reads the pull request number from an external_id that
// ExternalID made; 0 for any other.
func prOfCheckRun(externalID string) int {
	var pr int
	var gen int64
	if _, err := fmt.Sscanf(externalID, "stagely:pr-%d:gen-%d", &pr, &gen); err == nil && pr > 0 {
		return pr
	}
	return 0
}
