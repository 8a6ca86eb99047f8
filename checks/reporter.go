package checks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-github/v60/github"

	"github.com/stagely-dev/stagely/templates"
)

// API is the part of GitHub's Checks API that Reporter uses. It is
// satisfied by *github.ChecksService.
type API interface {
	ListCheckRunsForRef(ctx context.Context, owner, repo, ref string, opts *github.ListCheckRunsOptions) (*github.ListCheckRunsResults, *github.Response, error)
	CreateCheckRun(ctx context.Context, owner, repo string, opts github.CreateCheckRunOptions) (*github.CheckRun, *github.Response, error)
	UpdateCheckRun(ctx context.Context, owner, repo string, checkRunID int64, opts github.UpdateCheckRunOptions) (*github.CheckRun, *github.Response, error)
}

var _ API = (*github.ChecksService)(nil)

// Reporter creates and updates the "Stagely preview" Check Run of a
// deployment. It holds no state besides its API, so one Reporter serves
// every repository of an installation.
type Reporter struct {
	api API
}

// NewReporter returns a Reporter that talks to GitHub through api.
func NewReporter(api API) *Reporter {
	return &Reporter{api: api}
}

// Ensure returns the id of the Check Run named CheckName on sha whose
// external_id is externalID, creating it from rep if there is none.
//
// The lookup comes first so that a worker that crashed after creating the
// run, but before saving its id, finds that run again instead of making a
// second one. externalID must identify the deployment attempt (for example
// the deployment row's id) and must not be empty. A found run is returned
// as it is; the caller brings it up to date with Update. A new run has
// rep's status ("queued" when empty), and its conclusion when rep is
// already completed (a fork pull request's run can start as
// action_required).
func (r *Reporter) Ensure(ctx context.Context, owner, repo, sha, externalID string, rep Report) (int64, error) {
	if externalID == "" {
		return 0, errors.New("ensure check run: empty external id would match nothing and duplicate runs")
	}
	where := fmt.Sprintf("%s/%s@%s", owner, repo, templates.ShortSHA(sha))
	id, err := r.find(ctx, owner, repo, sha, externalID)
	if err != nil {
		return 0, fmt.Errorf("find check run %q on %s: %w", externalID, where, err)
	}
	if id != 0 {
		return id, nil
	}

	if rep.SHA == "" {
		rep.SHA = sha
	}
	out, err := Render(rep)
	if err != nil {
		return 0, fmt.Errorf("create check run on %s: %w", where, err)
	}
	opts := github.CreateCheckRunOptions{
		Name:       CheckName,
		HeadSHA:    sha,
		ExternalID: github.String(externalID),
		Status:     github.String(statusOf(rep)),
		DetailsURL: detailsURL(rep),
		Output:     out,
		Actions:    Actions(rep),
	}
	if rep.Status == "completed" {
		opts.Conclusion = github.String(rep.Conclusion)
		opts.CompletedAt = completedAt(rep)
	}
	run, _, err := r.api.CreateCheckRun(ctx, owner, repo, opts)
	if err != nil {
		return 0, fmt.Errorf("create check run on %s: %w", where, err)
	}
	return run.GetID(), nil
}

// find pages through the runs named CheckName on sha, all of them rather than
// only the latest, for the one with externalID. It returns 0 if none.
func (r *Reporter) find(ctx context.Context, owner, repo, sha, externalID string) (int64, error) {
	opts := &github.ListCheckRunsOptions{
		CheckName:   github.String(CheckName),
		Filter:      github.String("all"),
		ListOptions: github.ListOptions{PerPage: 100},
	}
	for {
		res, resp, err := r.api.ListCheckRunsForRef(ctx, owner, repo, sha, opts)
		if err != nil {
			return 0, err
		}
		for _, run := range res.CheckRuns {
			if run.GetExternalID() == externalID && run.GetName() == CheckName {
				return run.GetID(), nil
			}
		}
		if resp == nil || resp.NextPage == 0 {
			return 0, nil
		}
		opts.Page = resp.NextPage
	}
}

// Update sets the Check Run id to rep: status, conclusion and completed_at
// when completed, details_url (the first preview URL), output and buttons.
func (r *Reporter) Update(ctx context.Context, owner, repo string, id int64, rep Report) error {
	out, err := Render(rep)
	if err != nil {
		return fmt.Errorf("update check run %d on %s/%s: %w", id, owner, repo, err)
	}
	opts := github.UpdateCheckRunOptions{
		Name:       CheckName,
		Status:     github.String(statusOf(rep)),
		DetailsURL: detailsURL(rep),
		Output:     out,
		Actions:    Actions(rep),
	}
	if rep.Status == "completed" {
		opts.Conclusion = github.String(rep.Conclusion)
		opts.CompletedAt = completedAt(rep)
	}
	if _, _, err := r.api.UpdateCheckRun(ctx, owner, repo, id, opts); err != nil {
		return fmt.Errorf("update check run %d on %s/%s: %w", id, owner, repo, err)
	}
	return nil
}

func statusOf(rep Report) string {
	if rep.Status == "" {
		return "queued"
	}
	return rep.Status
}

// detailsURL is the first preview URL of a successful deployment: the link
// behind "Details" on the pull request.
func detailsURL(rep Report) *string {
	if rep.Conclusion != "success" || len(rep.Previews) == 0 || rep.Previews[0].URL == "" {
		return nil
	}
	return github.String(Mask(rep.Previews[0].URL, rep.Secrets))
}

func completedAt(rep Report) *github.Timestamp {
	t := rep.Now
	if t.IsZero() {
		t = time.Now()
	}
	return &github.Timestamp{Time: t.UTC()}
}
