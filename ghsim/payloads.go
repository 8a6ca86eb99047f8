package ghsim

// Overlays for the webhook templates: the parts of each payload that come
// from the simulated state. Keys of the recorded example that are not
// overlaid keep the example's values (GitHub sends some fields the simulator
// has no state for). All must be called with s.mu held.

// pendingHook is a webhook an admin mutation wants sent.
type pendingHook struct {
	event, action string
	inst          *installation
	overlay       obj
}

// envelope is what every payload carries: installation, repository,
// organization (for organization accounts) and sender.
func (s *Sim) envelope(inst *installation, r *repo, sender *account) obj {
	o := obj{
		"sender":       s.userJSON(sender),
		"installation": obj{"id": inst.id, "node_id": nodeID("MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9u", inst.id)},
		"enterprise":   absent{},
		"organization": absent{},
	}
	if r != nil {
		o["repository"] = s.webhookRepoJSON(r)
	}
	if inst.account.typ == typeOrg {
		o["organization"] = s.orgJSON(inst.account)
	}
	return o
}

// webhookRepoJSON is the repository as webhooks carry it: the REST shape
// plus the merge settings GitHub adds there.
func (s *Sim) webhookRepoJSON(r *repo) obj {
	o := s.repoJSON(r)
	o["custom_properties"] = obj{}
	return o
}

func repoRef(r *repo) obj {
	return obj{"id": r.id, "node_id": nodeID("R", r.id), "name": r.name, "full_name": r.fullName(), "private": r.private}
}

func (s *Sim) installationCreatedHook(inst *installation, sender *account) *pendingHook {
	repos := []any{}
	for _, r := range inst.repos {
		repos = append(repos, repoRef(r))
	}
	o := s.envelope(inst, nil, sender)
	o["installation"] = s.installationJSON(inst)
	o["repositories"] = repos
	o["requester"] = absent{}
	return &pendingHook{"installation", "created", inst, o}
}

func (s *Sim) repositoriesAddedHook(inst *installation, added []*repo, sender *account) *pendingHook {
	list := []any{}
	for _, r := range added {
		list = append(list, repoRef(r))
	}
	o := s.envelope(inst, nil, sender)
	o["installation"] = s.installationJSON(inst)
	o["repository_selection"] = "selected"
	o["repositories_added"] = list
	o["repositories_removed"] = []any{}
	o["requester"] = nil
	return &pendingHook{"installation_repositories", "added", inst, o}
}

func (s *Sim) pullRequestHook(action string, r *repo, p *pull, sender *account) *pendingHook {
	o := s.envelope(r.inst, r, sender)
	pr := s.pullJSON(r, p)
	// Webhooks carry the repositories in their webhook shape.
	pr["head"].(obj)["repo"] = s.webhookRepoJSON(p.headRepo)
	pr["base"].(obj)["repo"] = s.webhookRepoJSON(r)
	o["number"] = p.number
	o["pull_request"] = pr
	return &pendingHook{"pull_request", action, r.inst, o}
}

func (s *Sim) issueCommentHook(r *repo, p *pull, c *comment) *pendingHook {
	o := s.envelope(r.inst, r, c.user)
	o["issue"] = s.issueJSON(r, p)
	o["comment"] = s.commentJSON(r, c)
	return &pendingHook{"issue_comment", "created", r.inst, o}
}

func (s *Sim) checkRunHook(action string, r *repo, cr *checkRun, sender *account) *pendingHook {
	o := s.envelope(r.inst, r, sender)
	run := s.checkRunJSON(r, cr)
	var conclusion any
	if cr.conclusion != "" {
		conclusion = cr.conclusion
	}
	suiteStatus := "completed"
	if cr.status != "completed" {
		suiteStatus = "in_progress"
	}
	run["check_suite"] = obj{
		"id":            cr.suiteID,
		"node_id":       nodeID("CS", cr.suiteID),
		"head_branch":   r.headBranchFor(cr.headSHA),
		"head_sha":      cr.headSHA,
		"status":        suiteStatus,
		"conclusion":    conclusion,
		"url":           s.api("/repos/%s/check-suites/%d", r.fullName(), cr.suiteID),
		"before":        nil,
		"after":         cr.headSHA,
		"pull_requests": run["pull_requests"],
		"app":           s.appJSON(),
		"created_at":    ts(cr.startedAt),
		"updated_at":    ts(cr.startedAt),
		"repository":    absent{}, // optional; the example's would describe another repository
	}
	o["check_run"] = run
	return &pendingHook{"check_run", action, r.inst, o}
}
