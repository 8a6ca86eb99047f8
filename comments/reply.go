package comments

import (
	"context"
	"fmt"
	"slices"

	"github.com/google/go-github/v60/github"

	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/templates"
)

// Reply posts body as a new comment on pull request pr and returns its id.
// The body goes through Fit first.
func Reply(ctx context.Context, api API, owner, repo string, pr int, body string) (int64, error) {
	body = Fit(body)
	c, _, err := api.CreateComment(ctx, owner, repo, pr, &github.IssueComment{Body: github.String(body)})
	if err != nil {
		return 0, fmt.Errorf("reply on %s/%s#%d: %w", owner, repo, pr, err)
	}
	return c.GetID(), nil
}

// Fit returns body cut to fit in a GitHub comment (65,536 characters), at
// a line boundary and with a note saying it was cut, or body itself when
// it fits.
func Fit(body string) string {
	return templates.Truncate(body, maxBodyBytes, truncatedNote)
}

// Reactions Stagely puts on a command comment.
const (
	ReactionSeen    = "eyes"     // the command was read and is being handled
	ReactionDone    = "rocket"   // it was carried out
	ReactionRefused = "confused" // it was refused or failed
)

// ReactionsAPI is the part of GitHub's Reactions API that React uses. It is
// satisfied by *github.ReactionsService.
type ReactionsAPI interface {
	CreateIssueCommentReaction(ctx context.Context, owner, repo string, id int64, content string) (*github.Reaction, *github.Response, error)
}

var _ ReactionsAPI = (*github.ReactionsService)(nil)

// React adds the reaction content (one of GitHub's: "+1", "-1", "laugh",
// "confused", "heart", "hooray", "rocket", "eyes") to the issue comment
// commentID. Adding a reaction that is already there is not an error.
func React(ctx context.Context, rapi ReactionsAPI, owner, repo string, commentID int64, content string) error {
	valid := []string{"+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"}
	if !slices.Contains(valid, content) {
		return fmt.Errorf("react to comment %d on %s/%s: %q is not a GitHub reaction", commentID, owner, repo, content)
	}
	if _, _, err := rapi.CreateIssueCommentReaction(ctx, owner, repo, commentID, content); err != nil {
		return fmt.Errorf("react %q to comment %d on %s/%s: %w", content, commentID, owner, repo, err)
	}
	return nil
}

// PermissionsAPI is the part of GitHub's Repositories API that Permission
// uses. It is satisfied by *github.RepositoriesService.
type PermissionsAPI interface {
	GetPermissionLevel(ctx context.Context, owner, repo, user string) (*github.RepositoryPermissionLevel, *github.Response, error)
}

var _ PermissionsAPI = (*github.RepositoriesService)(nil)

// Permission returns user's permission on owner/repo as GitHub reports it:
// "admin", "write", "read" or "none" (GitHub reports the maintain role as
// "write" and triage as "read"). A user GitHub does not know there (404)
// has "none".
func Permission(ctx context.Context, papi PermissionsAPI, owner, repo, user string) (string, error) {
	p, _, err := papi.GetPermissionLevel(ctx, owner, repo, user)
	if isNotFound(err) {
		return "none", nil
	}
	if err != nil {
		return "", fmt.Errorf("get permission of %s on %s/%s: %w", user, owner, repo, err)
	}
	if p.GetPermission() == "" {
		return "none", nil
	}
	return p.GetPermission(), nil
}

// CanWrite reports whether perm allows running commands: write, maintain
// and admin do; read, triage, none and anything unknown do not.
func CanWrite(perm string) bool {
	switch perm {
	case "write", "maintain", "admin":
		return true
	}
	return false
}

// RenderNotPermitted tells user that command needs write access, which
// their permission (may be empty) does not give. With user empty the reply
// mentions nobody, for callers that add the mention themselves.
func RenderNotPermitted(user, command, permission string) (string, error) {
	return render("reply_not_permitted.md.tmpl", struct{ User, Command, Permission string }{user, command, permission})
}

// RenderAwaitingApproval tells user (may be empty, as above) that the pull request
// comes from a fork and waits for someone with write access to review
// commit sha and comment /stagely deploy.
func RenderAwaitingApproval(user, sha string) (string, error) {
	return render("reply_awaiting_approval.md.tmpl", struct{ User, SHA string }{user, sha})
}

// RenderNotEnabled says that repo ("owner/name") has no .stagely.yml and
// how to add one.
func RenderNotEnabled(repo string) (string, error) {
	return render("reply_not_enabled.md.tmpl", struct{ Repo string }{repo})
}

// RenderStatus answers /stagely status with s, masked like the sticky
// comment but without its marker and command list.
func RenderStatus(s Sticky) (string, error) {
	s, err := prepare(s)
	if err != nil {
		return "", err
	}
	body, err := templates.Execute("reply_status.md.tmpl", s)
	if err != nil {
		return "", fmt.Errorf("render status reply for %s#%d: %w", s.Repo, s.PR, err)
	}
	return Fit(checks.Mask(body, s.Secrets)), nil
}

func render(name string, data any) (string, error) {
	s, err := templates.Execute(name, data)
	if err != nil {
		return "", fmt.Errorf("render reply: %w", err)
	}
	return Fit(s), nil
}
