package reconciler

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-github/v60/github"
	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/comments"
	"github.com/stagely-dev/stagely/ghclient"
	"github.com/stagely-dev/stagely/store"
)

// Reactions Stagely leaves on a command comment.
const (
	reactSeen   = "eyes"
	reactDone   = "rocket"
	reactFailed = "confused"
)

// applyCommands authorises each pending command and turns it into desired
// state. It reacts 👀 on receipt; a refused command is answered and gets 😕.
// Commands wait as "applied" until their generation is reached, when
// finishCommands reacts 🚀 or 😕.
func (s *session) applyCommands(ctx context.Context) error {
	var cmds []store.Command
	if err := s.r.cfg.DB.NewSelect().Model(&cmds).Where("environment_id = ? AND status = ?", s.env.ID, store.CommandPending).
		Order("id").Scan(ctx); err != nil {
		return fmt.Errorf("load commands of environment %d: %w", s.env.ID, err)
	}
	for i := range cmds {
		if err := s.reload(ctx); err != nil {
			return err
		}
		err := s.apply(ctx, &cmds[i])
		if err != nil && ghclient.Refused(err) {
			// GitHub will not answer this one, ever (the app was removed,
			// the pull request is gone): waiting on it would hold back
			// every push and the destroy behind it.
			s.log.Warn().Err(err).Str("command", cmds[i].Name).Str("actor", cmds[i].Actor).Msg("command dropped: GitHub refuses what it needs")
			err = s.setCommand(ctx, &cmds[i], store.CommandRefused, 0)
		}
		if err != nil {
			return fmt.Errorf("command %q by %s: %w", cmds[i].Name, cmds[i].Actor, err)
		}
	}
	return nil
}

func (s *session) apply(ctx context.Context, c *store.Command) error {
	if err := s.react(ctx, c, reactSeen); err != nil {
		return err
	}
	if c.Name == store.CommandReply {
		if err := s.replyOnce(ctx, c, c.Reply); err != nil {
			return err
		}
		return s.setCommand(ctx, c, store.CommandDone, 0)
	}
	perm, err := comments.Permission(ctx, s.gh.Repositories, s.env.Owner, s.env.Repo, c.Actor)
	if err != nil {
		return fmt.Errorf("permission of %s: %w", c.Actor, err)
	}
	if !comments.CanWrite(perm) {
		body, err := comments.RenderNotPermitted(mention(c), c.Name, perm)
		if err != nil {
			return err
		}
		return s.refuse(ctx, c, body)
	}
	switch c.Name {
	case "status":
		st, err := s.status(ctx)
		if err != nil {
			return err
		}
		body, err := comments.RenderStatus(st)
		if err != nil {
			return err
		}
		if err := s.replyOnce(ctx, c, body); err != nil {
			return err
		}
		if err := s.react(ctx, c, reactDone); err != nil {
			return err
		}
		return s.setCommand(ctx, c, store.CommandDone, 0)
	case "destroy":
		g := s.env.DesiredGeneration + 1
		if err := s.update(ctx, "desired_state = 'destroyed', desired_generation = ?, touched_at = now()", g); err != nil {
			return err
		}
		return s.setCommand(ctx, c, store.CommandApplied, g)
	case "redeploy", "deploy":
		pr, _, err := s.gh.PullRequests.Get(ctx, s.env.Owner, s.env.Repo, s.env.PRNumber)
		if err != nil {
			return fmt.Errorf("look up pull request #%d: %w", s.env.PRNumber, err)
		}
		if pr.GetState() != "open" {
			return s.refuse(ctx, c, fmt.Sprintf("Pull request #%d is closed, so it has no preview to %s. Reopen it first.", s.env.PRNumber, c.Name))
		}
		g := s.env.DesiredGeneration + 1
		isFork := pr.GetHead().GetRepo().GetID() != pr.GetBase().GetRepo().GetID()
		sha := pr.GetHead().GetSHA()
		if isFork && s.env.DesiredSHA != "" {
			// A writer asking to deploy a fork's code is the approval forks
			// wait for, of the commit the comment asked them to review: one
			// pushed since, even before its event arrived, waits for its
			// own (the push's event clears the approval).
			sha = s.env.DesiredSHA
		}
		if err := s.update(ctx, `desired_state = 'running', desired_sha = ?, desired_generation = ?, is_fork = ?,
			is_fork_approved = true, head_repo = ?, touched_at = now()`,
			sha, g, isFork, pr.GetHead().GetRepo().GetFullName()); err != nil {
			return err
		}
		return s.setCommand(ctx, c, store.CommandApplied, g)
	}
	return s.refuse(ctx, c, "Unknown command `"+c.Name+"`.")
}

// finishCommands reacts to applied commands whose generation has been
// reached (or passed): 🚀 if the environment got where they asked, else 😕.
func (s *session) finishCommands(ctx context.Context) error {
	if err := s.reload(ctx); err != nil {
		return err
	}
	var cmds []store.Command
	if err := s.r.cfg.DB.NewSelect().Model(&cmds).
		Where("environment_id = ? AND status = ? AND target_generation <= ?", s.env.ID, store.CommandApplied, s.env.ObservedGeneration).
		Order("id").Scan(ctx); err != nil {
		return fmt.Errorf("load applied commands of environment %d: %w", s.env.ID, err)
	}
	for i := range cmds {
		c := &cmds[i]
		want := store.ObservedRunning
		if c.Name == "destroy" {
			want = store.ObservedDestroyed
		}
		r := reactDone
		if s.env.ObservedState != want {
			r = reactFailed
		}
		if err := s.react(ctx, c, r); err != nil {
			return err
		}
		if err := s.setCommand(ctx, c, store.CommandDone, c.TargetGeneration); err != nil {
			return err
		}
	}
	return nil
}

func (s *session) refuse(ctx context.Context, c *store.Command, body string) error {
	if err := s.replyOnce(ctx, c, body); err != nil {
		return err
	}
	if err := s.react(ctx, c, reactFailed); err != nil {
		return err
	}
	return s.setCommand(ctx, c, store.CommandRefused, 0)
}

func (s *session) setCommand(ctx context.Context, c *store.Command, status string, g int64) error {
	c.Status, c.TargetGeneration = status, g
	return store.InTx(ctx, s.r.cfg.DB, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.NewUpdate().Model(c).WherePK().Column("status", "target_generation").
			Set("updated_at = now()").Exec(ctx); err != nil {
			return fmt.Errorf("save command %d: %w", c.ID, err)
		}
		if status != store.CommandApplied && status != store.CommandRefused {
			return nil
		}
		// Who asked for what, and whether Stagely did it, outlives the
		// comments on GitHub.
		return store.Audit(ctx, tx, c.Actor, "command."+c.Name+"."+status, s.env.ID, map[string]any{
			"source": c.Source, "comment_id": c.CommentID, "delivery_id": c.DeliveryID, "generation": g,
		})
	})
}

// react adds a reaction to the command's comment. GitHub answers 200 for a
// reaction that is already there, so repeating it after a crash is harmless.
// Buttons have no comment to react to, and neither has a comment deleted
// since (or one the app may no longer see): the command stands without.
func (s *session) react(ctx context.Context, c *store.Command, content string) error {
	if c.CommentID == 0 {
		return nil
	}
	if _, _, err := s.gh.Reactions.CreateIssueCommentReaction(ctx, s.env.Owner, s.env.Repo, c.CommentID, content); err != nil {
		if ghclient.Refused(err) {
			s.log.Info().Err(err).Int64("comment", c.CommentID).Msg("no reaction on the command's comment")
			return nil
		}
		return fmt.Errorf("react %s: %w", content, err)
	}
	return nil
}

// replyOnce answers a command on the pull request, exactly once: the reply
// carries a marker naming the command, looked for before posting, so a
// crash between posting and recording does not post twice. Button presses
// have no comment to answer and are answered on the pull request too. The
// marker counts only as the reply's first line: replies quote what
// commenters wrote, so a marker can appear further down any of them.
func (s *session) replyOnce(ctx context.Context, c *store.Command, body string) error {
	marker := fmt.Sprintf("<!-- stagely:reply:%d -->", c.ID)
	opts := &github.IssueListCommentsOptions{ListOptions: github.ListOptions{PerPage: 100}}
	for {
		cs, resp, err := s.gh.Issues.ListComments(ctx, s.env.Owner, s.env.Repo, s.env.PRNumber, opts)
		if err != nil {
			return fmt.Errorf("list comments of #%d: %w", s.env.PRNumber, err)
		}
		for _, ic := range cs {
			if ic.GetUser().GetLogin() == s.r.cfg.BotLogin && strings.HasPrefix(ic.GetBody(), marker+"\n") {
				return nil
			}
		}
		if resp.NextPage == 0 {
			break
		}
		opts.Page = resp.NextPage
	}
	full := comments.Fit(marker + "\n" + body)
	if _, _, err := s.gh.Issues.CreateComment(ctx, s.env.Owner, s.env.Repo, s.env.PRNumber, &github.IssueComment{Body: &full}); err != nil {
		return fmt.Errorf("reply on #%d: %w", s.env.PRNumber, err)
	}
	return nil
}

// status describes the environment for `/stagely status`: a live
// preview with the URLs of the deployment that made it so.
func (s *session) status(ctx context.Context) (comments.Sticky, error) {
	e := s.env
	st := comments.Sticky{Repo: e.FullName(), PR: e.PRNumber, State: comments.State(e.ObservedState), SHA: e.ObservedSHA, UpdatedAt: e.UpdatedAt, Err: e.LastError}
	switch e.ObservedState {
	case store.ObservedRunning:
		st.State = comments.StateReady
		var d store.Deployment
		err := s.r.cfg.DB.NewSelect().Model(&d).Column("previews").
			Where("environment_id = ? AND generation <= ? AND sha = ? AND conclusion = 'success'", e.ID, e.ObservedGeneration, e.ObservedSHA).
			Order("generation DESC").Limit(1).Scan(ctx)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return st, fmt.Errorf("previews of environment %d: %w", e.ID, err)
		}
		for _, p := range d.Previews {
			st.Previews = append(st.Previews, checks.Preview{Name: p.Name, URL: p.URL})
		}
	case store.ObservedFailed, store.ObservedInvalidConfig:
		// The environment's last_error is cleared once an outcome is
		// observed; why it failed is the deployment's.
		var d store.Deployment
		err := s.r.cfg.DB.NewSelect().Model(&d).Column("error").
			Where("environment_id = ? AND generation = ?", e.ID, e.ObservedGeneration).Scan(ctx)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return st, fmt.Errorf("outcome of environment %d: %w", e.ID, err)
		}
		if d.Error != "" {
			st.Err = d.Error
		}
	case store.ObservedNew:
		st.State = comments.StateQueued
	}
	return st, nil
}

// mention is who a reply addresses: the comment's author; a button press
// has no comment to answer, so its reply names nobody.
func mention(c *store.Command) string {
	if c.Source == store.SourceComment {
		return c.Actor
	}
	return ""
}
