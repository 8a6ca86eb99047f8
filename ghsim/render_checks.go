package ghsim

func (s *Sim) checkRunJSON(r *repo, cr *checkRun) obj {
	full := r.fullName()
	u := s.api("/repos/%s/check-runs/%d", full, cr.id)
	var conclusion any
	if cr.conclusion != "" {
		conclusion = cr.conclusion
	}
	var ext, details any
	if cr.externalID != nil {
		ext = *cr.externalID
	}
	if cr.detailsURL != nil {
		details = *cr.detailsURL
	}
	ptr := func(p *string) any {
		if p == nil {
			return nil
		}
		return *p
	}
	prs := []any{}
	for _, n := range sortedPullNumbers(r) {
		p := r.pulls[n]
		// GitHub lists only PRs whose head is in this repository.
		if p.state == "open" && p.headSHA == cr.headSHA && p.headRepo == r {
			prs = append(prs, s.pullMinimalJSON(r, p))
		}
	}
	return obj{
		"id":           cr.id,
		"head_sha":     cr.headSHA,
		"node_id":      nodeID("CR", cr.id),
		"external_id":  ext,
		"url":          u,
		"html_url":     s.api("/%s/runs/%d", full, cr.id),
		"details_url":  details,
		"status":       cr.status,
		"conclusion":   conclusion,
		"started_at":   tsOrNil(cr.startedAt),
		"completed_at": tsOrNil(cr.completedAt),
		"output": obj{
			"title":             ptr(cr.output.title),
			"summary":           ptr(cr.output.summary),
			"text":              ptr(cr.output.text),
			"annotations_count": cr.annotations,
			"annotations_url":   u + "/annotations",
		},
		"name":          cr.name,
		"check_suite":   obj{"id": cr.suiteID},
		"app":           s.appJSON(),
		"pull_requests": prs,
	}
}

func (s *Sim) pullMinimalJSON(r *repo, p *pull) obj {
	ref := func(rp *repo, name, sha string) obj {
		return obj{"ref": name, "sha": sha, "repo": obj{"id": rp.id, "url": s.api("/repos/%s", rp.fullName()), "name": rp.name}}
	}
	return obj{
		"id":     p.id,
		"number": p.number,
		"url":    s.api("/repos/%s/pulls/%d", r.fullName(), p.number),
		"head":   ref(p.headRepo, p.headRef, p.headSHA),
		"base":   ref(r, p.baseRef, r.branches[p.baseRef]),
	}
}
