package fleet

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/google/go-github/v60/github"
	"github.com/palantir/go-githubapp/githubapp"
)

// GitHubTarballs fetches sources through the GitHub App's installation
// clients: the server, not the agent, holds GitHub credentials.
type GitHubTarballs struct {
	Clients githubapp.ClientCreator
}

func (g GitHubTarballs) Tarball(ctx context.Context, installationID int64, owner, repo, sha string) (io.ReadCloser, error) {
	gh, err := g.Clients.NewInstallationClient(installationID)
	if err != nil {
		return nil, fmt.Errorf("github client for installation %d: %w", installationID, err)
	}
	u, _, err := gh.Repositories.GetArchiveLink(ctx, owner, repo, github.Tarball, &github.RepositoryContentGetOptions{Ref: sha}, 0)
	if err != nil {
		return nil, fmt.Errorf("tarball link of %s/%s@%s: %w", owner, repo, sha, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := gh.Client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("download tarball of %s/%s@%s: %w", owner, repo, sha, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("download tarball of %s/%s@%s: %s", owner, repo, sha, resp.Status)
	}
	return resp.Body, nil
}
