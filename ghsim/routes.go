package ghsim

// authKind says which credential an API operation accepts, as on GitHub.
type authKind int

const (
	// authJWT: the App's own JWT (the /app endpoints).
	authJWT authKind = iota
	// authInstallation: an installation access token (ghs_…).
	authInstallation
)

// apiRoute is one served REST operation. path is the OpenAPI path template
// exactly as it appears in GitHub's rest-api.json, so the same table drives
// routing, request validation and the extraction of the embedded spec subset.
type apiRoute struct {
	method string
	path   string
	auth   authKind
	handle func(s *Sim, c *call) *response
}

// apiRoutes lists every REST operation the simulator serves. Order matters
// only for templates that could match the same URL: literal segments are
// preferred by the matcher regardless of order.
func apiRoutes() []apiRoute {
	return []apiRoute{
		{"GET", "/app", authJWT, (*Sim).getApp},
		{"GET", "/app/installations/{installation_id}", authJWT, (*Sim).getInstallation},
		{"POST", "/app/installations/{installation_id}/access_tokens", authJWT, (*Sim).createAccessToken},
		{"GET", "/installation/repositories", authInstallation, (*Sim).listInstallationRepos},
		{"GET", "/repos/{owner}/{repo}", authInstallation, (*Sim).getRepo},
		{"GET", "/repos/{owner}/{repo}/pulls/{pull_number}", authInstallation, (*Sim).getPull},
		{"GET", "/repos/{owner}/{repo}/contents/{path}", authInstallation, (*Sim).getContents},
		{"GET", "/repos/{owner}/{repo}/tarball/{ref}", authInstallation, (*Sim).getTarball},
		{"POST", "/repos/{owner}/{repo}/check-runs", authInstallation, (*Sim).createCheckRun},
		{"GET", "/repos/{owner}/{repo}/check-runs/{check_run_id}", authInstallation, (*Sim).getCheckRun},
		{"PATCH", "/repos/{owner}/{repo}/check-runs/{check_run_id}", authInstallation, (*Sim).updateCheckRun},
		{"GET", "/repos/{owner}/{repo}/commits/{ref}/check-runs", authInstallation, (*Sim).listCheckRunsForRef},
		{"GET", "/repos/{owner}/{repo}/issues/{issue_number}/comments", authInstallation, (*Sim).listIssueComments},
		{"POST", "/repos/{owner}/{repo}/issues/{issue_number}/comments", authInstallation, (*Sim).createIssueComment},
		{"GET", "/repos/{owner}/{repo}/issues/comments/{comment_id}", authInstallation, (*Sim).getIssueComment},
		{"PATCH", "/repos/{owner}/{repo}/issues/comments/{comment_id}", authInstallation, (*Sim).updateIssueComment},
		{"GET", "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions", authInstallation, (*Sim).listCommentReactions},
		{"POST", "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions", authInstallation, (*Sim).createCommentReaction},
		{"GET", "/repos/{owner}/{repo}/collaborators/{username}/permission", authInstallation, (*Sim).getCollaboratorPermission},
	}
}

// webhookKind is one webhook event+action the simulator sends: the name of
// its schema in webhooks-api.json and the recorded example used as template.
type webhookKind struct {
	event, action string
	schema        string // key under "webhooks" in webhooks-api.json
	template      string // file under githubdata/webhooks/
}

func webhookKinds() []webhookKind {
	return []webhookKind{
		{"installation", "created", "installation-created", "installation.created.1.json"},
		{"installation_repositories", "added", "installation-repositories-added", "installation_repositories.added.1.json"},
		{"pull_request", "opened", "pull-request-opened", "pull_request.opened.2.json"},
		{"pull_request", "synchronize", "pull-request-synchronize", "pull_request.synchronize.1.json"},
		{"pull_request", "reopened", "pull-request-reopened", "pull_request.reopened.1.json"},
		{"pull_request", "closed", "pull-request-closed", "pull_request.closed.1.json"},
		{"issue_comment", "created", "issue-comment-created", "issue_comment.created.4.json"},
		{"check_run", "requested_action", "check-run-requested-action", "check_run.requested_action.1.json"},
		{"check_run", "rerequested", "check-run-rerequested", "check_run.rerequested.1.json"},
	}
}
