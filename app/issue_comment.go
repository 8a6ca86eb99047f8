package app

import (
	"context"
	"strings"

	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/comments"
	"github.com/stagely-dev/stagely/store"
)

// IssueCommentHandler records `/stagely …` commands written on pull
// requests. Whether the author may run them is decided by the reconciler,
// which asks GitHub; here the comment is only parsed and kept.
type IssueCommentHandler struct{ *Base }

func (h *IssueCommentHandler) Handles() []string { return []string{"issue_comment"} }

func (h *IssueCommentHandler) Handle(ctx context.Context, eventType, deliveryID string, payload []byte) error {
	var ev issueCommentEvent
	if err := decode(payload, &ev); err != nil {
		return err
	}
	if ev.Action != "created" || ev.Issue.PullRequest == nil {
		return nil
	}
	c := ev.Comment
	if isBot(c.User) || isBot(ev.Sender) {
		return nil // never answer a bot, least of all ourselves
	}
	res := comments.Parse(c.Body)
	var name, reply string
	switch res.Kind {
	case comments.KindCommand:
		name = res.Command.Name
	case comments.KindReply:
		name, reply = store.CommandReply, res.Reply
	default:
		return nil
	}
	if ev.installationID() == 0 {
		return ignoreNotInstalled(ctx)
	}
	if ev.Repository == nil || ev.Issue.Number == 0 {
		return errorf(ErrMalformed, "%s.%s without repository or issue number", eventType, ev.Action)
	}
	in := store.CommandIntent{
		Repo:       repoRef(ev.installationID(), ev.Repository),
		PRNumber:   ev.Issue.Number,
		DeliveryID: deliveryID,
		Source:     store.SourceComment,
		CommentID:  c.ID,
		Actor:      c.User.Login,
		Name:       name,
		Reply:      reply,
	}
	d := store.Delivery{ID: deliveryID, Event: eventType, Action: ev.Action, InstallationID: in.Repo.InstallationID}
	return h.deliver(ctx, d, func(ctx context.Context, tx bun.Tx) ([]int64, error) {
		id, err := store.RecordCommand(ctx, tx, in)
		return []int64{id}, err
	})
}

func isBot(u user) bool {
	return u.Type == "Bot" || strings.HasSuffix(u.Login, "[bot]")
}
