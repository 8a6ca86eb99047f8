package ghsim

import (
	"net/http"
	"sort"
	"strings"
	"time"
)

// POST /repos/{owner}/{repo}/issues/{issue_number}/comments
func (s *Sim) createIssueComment(c *call) *response {
	n := int(c.intParam("issue_number"))
	p := c.repo.pulls[n]
	if p == nil {
		return notFound(c) // the simulator has pull requests only
	}
	var in struct {
		Body string `json:"body"`
	}
	if err := c.decode(&in); err != nil {
		return jsonResponse(http.StatusBadRequest, errorBody("Problems parsing JSON", c.docURL()))
	}
	if strings.TrimSpace(in.Body) == "" {
		return validationFailed(c, fieldError{Resource: "IssueComment", Field: "body", Code: "missing_field"})
	}
	cm := &comment{id: s.st.newID(), issueNumber: n, user: s.bot, body: in.Body, createdAt: c.now, updatedAt: c.now}
	c.repo.comments = append(c.repo.comments, cm)
	p.updatedAt = c.now
	body := s.commentJSON(c.repo, cm)
	resp := jsonResponse(http.StatusCreated, body)
	resp.header.Set("Location", body["url"].(string))
	return resp
}

// GET /repos/{owner}/{repo}/issues/{issue_number}/comments
func (s *Sim) listIssueComments(c *call) *response {
	n := int(c.intParam("issue_number"))
	if c.repo.pulls[n] == nil {
		return notFound(c)
	}
	var since time.Time
	if v := c.query.Get("since"); v != "" {
		since, _ = time.Parse(time.RFC3339, v) // validated against the description already
	}
	var list []*comment
	for _, cm := range c.repo.comments {
		if cm.issueNumber == n && !cm.updatedAt.Before(since) {
			list = append(list, cm)
		}
	}
	resp := jsonResponse(http.StatusOK, nil)
	lo, hi := s.paginate(c, len(list), resp.header)
	page := []any{}
	for _, cm := range list[lo:hi] {
		page = append(page, s.commentJSON(c.repo, cm))
	}
	resp.body = page
	return resp
}

// GET /repos/{owner}/{repo}/issues/comments/{comment_id}
func (s *Sim) getIssueComment(c *call) *response {
	cm := c.repo.findComment(c.intParam("comment_id"))
	if cm == nil {
		return notFound(c)
	}
	return jsonResponse(http.StatusOK, s.commentJSON(c.repo, cm))
}

// PATCH /repos/{owner}/{repo}/issues/comments/{comment_id}
func (s *Sim) updateIssueComment(c *call) *response {
	cm := c.repo.findComment(c.intParam("comment_id"))
	if cm == nil {
		return notFound(c)
	}
	var in struct {
		Body string `json:"body"`
	}
	if err := c.decode(&in); err != nil {
		return jsonResponse(http.StatusBadRequest, errorBody("Problems parsing JSON", c.docURL()))
	}
	if strings.TrimSpace(in.Body) == "" {
		return validationFailed(c, fieldError{Resource: "IssueComment", Field: "body", Code: "missing_field"})
	}
	cm.body, cm.updatedAt = in.Body, c.now
	return jsonResponse(http.StatusOK, s.commentJSON(c.repo, cm))
}

// POST /repos/{owner}/{repo}/issues/comments/{comment_id}/reactions answers
// 201 for a new reaction and 200 with the existing one when the same user
// already reacted with the same content, like GitHub.
func (s *Sim) createCommentReaction(c *call) *response {
	cm := c.repo.findComment(c.intParam("comment_id"))
	if cm == nil {
		return notFound(c)
	}
	var in struct {
		Content string `json:"content"`
	}
	if err := c.decode(&in); err != nil {
		return jsonResponse(http.StatusBadRequest, errorBody("Problems parsing JSON", c.docURL()))
	}
	for _, rc := range cm.reactions {
		if rc.user == s.bot && rc.content == in.Content {
			return jsonResponse(http.StatusOK, s.reactionJSON(rc))
		}
	}
	rc := &reaction{id: s.st.newID(), user: s.bot, content: in.Content, createdAt: c.now}
	cm.reactions = append(cm.reactions, rc)
	return jsonResponse(http.StatusCreated, s.reactionJSON(rc))
}

// GET /repos/{owner}/{repo}/issues/comments/{comment_id}/reactions
func (s *Sim) listCommentReactions(c *call) *response {
	cm := c.repo.findComment(c.intParam("comment_id"))
	if cm == nil {
		return notFound(c)
	}
	content := c.query.Get("content")
	var list []*reaction
	for _, rc := range cm.reactions {
		if content == "" || rc.content == content {
			list = append(list, rc)
		}
	}
	resp := jsonResponse(http.StatusOK, nil)
	lo, hi := s.paginate(c, len(list), resp.header)
	page := []any{}
	for _, rc := range list[lo:hi] {
		page = append(page, s.reactionJSON(rc))
	}
	resp.body = page
	return resp
}

// GET /repos/{owner}/{repo}/collaborators/{username}/permission
//
// Unknown logins are 404 as on GitHub; known ones answer their permission
// on the repository, "none" (private) or "read" (public) by default.
func (s *Sim) getCollaboratorPermission(c *call) *response {
	a := s.st.accounts[strings.ToLower(c.params["username"])]
	if a == nil || a.typ == typeOrg {
		return notFound(c)
	}
	perm := c.repo.permission(a)
	// GitHub's "permission" field folds the finer roles into the classic
	// levels; "role_name" keeps them.
	legacy := perm
	switch perm {
	case "maintain":
		legacy = "write"
	case "triage":
		legacy = "read"
	}
	rank := map[string]int{"none": 0, "read": 1, "triage": 2, "write": 3, "maintain": 4, "admin": 5}[perm]
	u := s.userJSON(a)
	u["permissions"] = obj{
		"pull":     rank >= 1,
		"triage":   rank >= 2,
		"push":     rank >= 3,
		"maintain": rank >= 4,
		"admin":    rank >= 5,
	}
	u["role_name"] = perm
	return jsonResponse(http.StatusOK, obj{"permission": legacy, "role_name": perm, "user": u})
}

func sortedPullNumbers(r *repo) []int {
	ns := make([]int, 0, len(r.pulls))
	for n := range r.pulls {
		ns = append(ns, n)
	}
	sort.Ints(ns)
	return ns
}
