package ghsim

func (s *Sim) reactionRollup(u string, rs []*reaction) obj {
	out := obj{"url": u, "total_count": len(rs)}
	for _, c := range reactionContents() {
		out[c] = 0
	}
	for _, r := range rs {
		out[r.content] = out[r.content].(int) + 1
	}
	return out
}

func reactionContents() []string {
	return []string{"+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"}
}

// issueJSON is the issue side of a pull request, as issue_comment webhooks
// carry it (with issue.pull_request set).
func (s *Sim) issueJSON(r *repo, p *pull) obj {
	full := r.fullName()
	u := s.api("/repos/%s/issues/%d", full, p.number)
	html := s.api("/%s/pull/%d", full, p.number)
	return obj{
		"url":                      u,
		"repository_url":           s.api("/repos/%s", full),
		"labels_url":               u + "/labels{/name}",
		"comments_url":             u + "/comments",
		"events_url":               u + "/events",
		"html_url":                 html,
		"timeline_url":             u + "/timeline",
		"id":                       p.issueID,
		"node_id":                  nodeID("PR", p.issueID),
		"number":                   p.number,
		"title":                    p.title,
		"user":                     s.userJSON(p.user),
		"labels":                   []any{},
		"state":                    p.state,
		"locked":                   false,
		"assignee":                 nil,
		"assignees":                []any{},
		"milestone":                nil,
		"comments":                 countComments(r, p.number),
		"created_at":               ts(p.createdAt),
		"updated_at":               ts(p.updatedAt),
		"closed_at":                tsOrNil(p.closedAt),
		"author_association":       r.authorAssociation(p.user),
		"active_lock_reason":       nil,
		"draft":                    p.draft,
		"body":                     strOrNil(p.body),
		"reactions":                s.reactionRollup(u+"/reactions", nil),
		"performed_via_github_app": nil,
		"state_reason":             nil,
		"pull_request": obj{
			"url":       s.api("/repos/%s/pulls/%d", full, p.number),
			"html_url":  html,
			"diff_url":  html + ".diff",
			"patch_url": html + ".patch",
			"merged_at": tsOrNil(p.mergedAt),
		},
	}
}

func (s *Sim) commentJSON(r *repo, c *comment) obj {
	full := r.fullName()
	u := s.api("/repos/%s/issues/comments/%d", full, c.id)
	return obj{
		"id":                       c.id,
		"node_id":                  nodeID("IC", c.id),
		"url":                      u,
		"html_url":                 s.api("/%s/pull/%d#issuecomment-%d", full, c.issueNumber, c.id),
		"body":                     c.body,
		"user":                     s.userJSON(c.user),
		"created_at":               ts(c.createdAt),
		"updated_at":               ts(c.updatedAt),
		"issue_url":                s.api("/repos/%s/issues/%d", full, c.issueNumber),
		"author_association":       r.authorAssociation(c.user),
		"performed_via_github_app": nil,
		"reactions":                s.reactionRollup(u+"/reactions", c.reactions),
	}
}

func (s *Sim) reactionJSON(rc *reaction) obj {
	return obj{
		"id":         rc.id,
		"node_id":    nodeID("REA", rc.id),
		"user":       s.userJSON(rc.user),
		"content":    rc.content,
		"created_at": ts(rc.createdAt),
	}
}
