package comments

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-github/v60/github"

	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/templates"
)

// Marker is the hidden first line of the sticky comment. Upsert finds the
// comment by it (and by its author, the bot), so it must never change.
const Marker = "<!-- stagely:sticky -->"

// State is the state a sticky comment shows.
type State string

// States of a preview as the sticky comment shows them.
const (
	StateQueued           State = "queued"
	StateDeploying        State = "deploying"
	StateReady            State = "ready"
	StateFailed           State = "failed"
	StateDestroyed        State = "destroyed"
	StateNotEnabled       State = "not_enabled"       // no .stagely.yml at the commit
	StateAwaitingApproval State = "awaiting_approval" // fork pull request waiting for /stagely deploy
	StateInvalidConfig    State = "invalid_config"    // .stagely.yml cannot be used; Err says why
)

func (s State) valid() bool {
	return slices.Contains([]State{StateQueued, StateDeploying, StateReady, StateFailed, StateDestroyed,
		StateNotEnabled, StateAwaitingApproval, StateInvalidConfig}, s)
}

// Sticky is what the sticky comment (and the reply to /stagely status)
// shows.
type Sticky struct {
	Repo     string // "owner/name"
	PR       int
	State    State
	Previews []checks.Preview // the preview URLs, when there are any
	SHA      string           // the commit the state is about
	// UpdatedAt is when the state last changed, not when the comment is
	// rendered: an unchanged state then renders the same body, and Upsert
	// skips the edit.
	UpdatedAt time.Time
	Message   string // optional Markdown paragraph, e.g. why the preview was destroyed
	// IdleFor, for destroyed, is the time to live after which the reaper
	// destroyed an idle preview (no push or command for that long); zero
	// for any other destroy.
	IdleFor time.Duration
	Err     string   // for failed and invalid_config: what went wrong and what to do
	Secrets []string // values replaced by "***" wherever they appear
}

// Size limits. GitHub caps a comment body at 65,536 characters; a byte
// count is never lower than the character count, so a byte limit with a
// margin is always safe.
const (
	maxBodyBytes  = 65000
	maxFieldBytes = 16 << 10
	truncatedNote = "_… truncated: this comment was too long for GitHub._"
)

// RenderSticky renders the sticky comment: Marker, the state and what it
// means, the preview URLs, the commit, the time of the last change and the
// commands. Secrets are masked and the body stays under GitHub's limit, cut
// at a line boundary with a note saying so.
func RenderSticky(s Sticky) (string, error) {
	s, err := prepare(s)
	if err != nil {
		return "", err
	}
	body, err := templates.Execute("sticky.md.tmpl", s)
	if err != nil {
		return "", fmt.Errorf("render sticky comment for %s#%d: %w", s.Repo, s.PR, err)
	}
	// Mask the whole body too, but never the marker: a secret that
	// happened to match part of it would make the comment unfindable.
	body = templates.Truncate(checks.Mask(body, s.Secrets), maxBodyBytes-len(Marker)-1, truncatedNote)
	return Marker + "\n" + body, nil
}

// prepare checks s and masks and bounds its free text.
func prepare(s Sticky) (Sticky, error) {
	if !s.State.valid() {
		return s, fmt.Errorf("render comment for %s#%d: unknown state %q", s.Repo, s.PR, s.State)
	}
	s.Message = templates.Truncate(checks.Mask(strings.TrimSpace(s.Message), s.Secrets), maxFieldBytes, "… (message truncated)")
	s.Err = templates.Truncate(checks.Mask(strings.TrimSpace(s.Err), s.Secrets), maxFieldBytes, "… (error truncated)")
	s.Previews = slices.Clone(s.Previews)
	for i := range s.Previews {
		s.Previews[i].Name = checks.Mask(s.Previews[i].Name, s.Secrets)
		s.Previews[i].URL = checks.Mask(s.Previews[i].URL, s.Secrets)
	}
	return s, nil
}

// API is the part of GitHub's Issues API that the sticky comment and the
// replies use. It is satisfied by *github.IssuesService.
type API interface {
	ListComments(ctx context.Context, owner, repo string, number int, opts *github.IssueListCommentsOptions) ([]*github.IssueComment, *github.Response, error)
	GetComment(ctx context.Context, owner, repo string, commentID int64) (*github.IssueComment, *github.Response, error)
	CreateComment(ctx context.Context, owner, repo string, number int, comment *github.IssueComment) (*github.IssueComment, *github.Response, error)
	EditComment(ctx context.Context, owner, repo string, commentID int64, comment *github.IssueComment) (*github.IssueComment, *github.Response, error)
}

var _ API = (*github.IssuesService)(nil)

// Upsert makes body the pull request's one sticky comment and returns the
// comment's id and whether anything was written.
//
// With knownID (the id saved last time) it reads that comment first: if it
// is still the bot's sticky comment on this pull request it is edited, or
// left alone when its body is already body. A deleted comment (404), or an
// id that is not this pull request's sticky comment, falls through to a
// search of every page of the pull request's comments for the oldest one
// that starts with Marker and was written by botLogin (for a GitHub App,
// "<slug>[bot]"); a human quoting the marker is never matched. If there is
// none, the comment is created.
//
// Two Upserts for the same pull request at once could both create; callers
// serialise work per pull request (the reconciler's lease does).
func Upsert(ctx context.Context, api API, owner, repo string, pr int, botLogin string, knownID int64, body string) (id int64, changed bool, err error) {
	where := fmt.Sprintf("%s/%s#%d", owner, repo, pr)
	if !strings.HasPrefix(body, Marker) {
		return 0, false, fmt.Errorf("upsert sticky comment on %s: body does not start with the marker, so it could never be found again", where)
	}
	if botLogin == "" {
		return 0, false, fmt.Errorf("upsert sticky comment on %s: empty bot login", where)
	}

	if knownID != 0 {
		c, _, err := api.GetComment(ctx, owner, repo, knownID)
		switch {
		case isNotFound(err):
			// Deleted by someone: search, then create.
		case err != nil:
			return 0, false, fmt.Errorf("get sticky comment %d on %s: %w", knownID, where, err)
		case isSticky(c, pr, botLogin):
			return edit(ctx, api, owner, repo, where, c, body)
		}
	}

	c, err := findSticky(ctx, api, owner, repo, pr, botLogin)
	if err != nil {
		return 0, false, fmt.Errorf("find sticky comment on %s: %w", where, err)
	}
	if c != nil {
		return edit(ctx, api, owner, repo, where, c, body)
	}
	created, _, err := api.CreateComment(ctx, owner, repo, pr, &github.IssueComment{Body: github.String(body)})
	if err != nil {
		return 0, false, fmt.Errorf("create sticky comment on %s: %w", where, err)
	}
	return created.GetID(), true, nil
}

// findSticky returns the oldest sticky comment by botLogin on pr, or nil.
func findSticky(ctx context.Context, api API, owner, repo string, pr int, botLogin string) (*github.IssueComment, error) {
	opts := &github.IssueListCommentsOptions{ListOptions: github.ListOptions{PerPage: 100}}
	for {
		page, resp, err := api.ListComments(ctx, owner, repo, pr, opts)
		if err != nil {
			return nil, fmt.Errorf("list comments (page %d): %w", max(opts.Page, 1), err)
		}
		for _, c := range page {
			if isSticky(c, pr, botLogin) {
				return c, nil
			}
		}
		if resp == nil || resp.NextPage == 0 {
			return nil, nil
		}
		opts.Page = resp.NextPage
	}
}

// isSticky reports whether c is the bot's sticky comment on pull request pr.
// The marker must open the body, as RenderSticky puts it: the bot's
// replies quote what commenters wrote, so the marker can appear further
// down a comment of the bot's that is not the sticky.
func isSticky(c *github.IssueComment, pr int, botLogin string) bool {
	if c == nil || !strings.HasPrefix(c.GetBody(), Marker) || !strings.EqualFold(c.GetUser().GetLogin(), botLogin) {
		return false
	}
	u := c.GetIssueURL()
	return u == "" || strings.HasSuffix(u, "/issues/"+strconv.Itoa(pr))
}

func edit(ctx context.Context, api API, owner, repo, where string, c *github.IssueComment, body string) (int64, bool, error) {
	if sameBody(c.GetBody(), body) {
		return c.GetID(), false, nil
	}
	if _, _, err := api.EditComment(ctx, owner, repo, c.GetID(), &github.IssueComment{Body: github.String(body)}); err != nil {
		return 0, false, fmt.Errorf("edit sticky comment %d on %s: %w", c.GetID(), where, err)
	}
	return c.GetID(), true, nil
}

// sameBody compares bodies as GitHub shows them: line endings and trailing
// white space do not count.
func sameBody(a, b string) bool {
	norm := func(s string) string { return strings.TrimRight(strings.ReplaceAll(s, "\r\n", "\n"), " \t\n") }
	return norm(a) == norm(b)
}

func isNotFound(err error) bool {
	var e *github.ErrorResponse
	return errors.As(err, &e) && e.Response != nil && e.Response.StatusCode == http.StatusNotFound
}
