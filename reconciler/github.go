package reconciler

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/google/go-github/v60/github"

	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/comments"
	"github.com/stagely-dev/stagely/repoconfig"
)

func (s *session) checks() *checks.Reporter { return checks.NewReporter(s.gh.Checks) }

// loadConfig reads .stagely.yml at sha through the GitHub API. A missing
// file is repoconfig.ErrNotFound, an invalid one a *repoconfig.ParseError;
// anything else is a fault worth retrying.
func (s *session) loadConfig(ctx context.Context, sha string) (*repoconfig.Config, error) {
	f, _, resp, err := s.gh.Repositories.GetContents(ctx, s.env.Owner, s.env.Repo, repoconfig.FileName,
		&github.RepositoryContentGetOptions{Ref: sha})
	if resp != nil && resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("%s at %s: %w", repoconfig.FileName, short(sha), repoconfig.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	if f == nil {
		return nil, fmt.Errorf("%s at %s is a directory: %w", repoconfig.FileName, short(sha), repoconfig.ErrNotFound)
	}
	if f.GetSize() > repoconfig.MaxFileSize {
		return nil, &repoconfig.ParseError{Errs: []repoconfig.Error{{Line: 1, Msg: fmt.Sprintf("file is %d bytes; the limit is %d", f.GetSize(), repoconfig.MaxFileSize)}}}
	}
	body, err := f.GetContent()
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", repoconfig.FileName, err)
	}
	return repoconfig.Parse([]byte(body))
}

// sticky brings the pull request's one Stagely comment to state. The
// comment's id is kept on the environment; comments.Upsert finds it by its
// marker if the id is unknown (a crash after creating it), so there is
// never a second one, and it edits only when the body changes.
//
// at is when the state was reached, not when this call runs: repeating a
// step after a crash renders the same body, which is then not edited.
func (s *session) sticky(ctx context.Context, state comments.State, sha string, previews []checks.Preview, errMsg string, at time.Time) error {
	return s.putSticky(ctx, comments.Sticky{State: state, Previews: previews, SHA: sha, UpdatedAt: at, Err: errMsg})
}

// putSticky is sticky for a comment with more to say than a state; st's
// Repo and PR are filled in.
func (s *session) putSticky(ctx context.Context, st comments.Sticky) error {
	st.Repo, st.PR = s.env.FullName(), s.env.PRNumber
	body, err := comments.RenderSticky(st)
	if err != nil {
		return fmt.Errorf("render comment: %w", err)
	}
	id, _, err := comments.Upsert(ctx, s.gh.Issues, s.env.Owner, s.env.Repo, s.env.PRNumber, s.r.cfg.BotLogin, s.env.CommentID, body)
	if err != nil {
		return fmt.Errorf("update PR comment: %w", err)
	}
	if id != s.env.CommentID {
		if err := s.update(ctx, "comment_id = ?", id); err != nil {
			return err
		}
		s.env.CommentID = id
	}
	return nil
}
