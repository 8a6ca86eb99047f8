package ghsim

import (
	"net/http"
	"strings"
)

// GET /app
func (s *Sim) getApp(c *call) *response {
	a := s.appJSON()
	a["installations_count"] = len(s.st.installations)
	return jsonResponse(http.StatusOK, a)
}

// GET /app/installations/{installation_id}
func (s *Sim) getInstallation(c *call) *response {
	inst := s.st.installations[c.intParam("installation_id")]
	if inst == nil {
		return notFound(c)
	}
	return jsonResponse(http.StatusOK, s.installationJSON(inst))
}

// POST /app/installations/{installation_id}/access_tokens
//
// The token may be narrowed to some of the installation's repositories, by
// name or id, as on GitHub; naming one outside the installation is a 422.
func (s *Sim) createAccessToken(c *call) *response {
	inst := s.st.installations[c.intParam("installation_id")]
	if inst == nil {
		return notFound(c)
	}
	var req struct {
		Repositories  []string `json:"repositories"`
		RepositoryIDs []int64  `json:"repository_ids"`
	}
	if err := c.decode(&req); err != nil {
		return jsonResponse(http.StatusBadRequest, errorBody("Problems parsing JSON", c.docURL()))
	}
	var ids map[int64]bool
	if len(req.Repositories) > 0 || len(req.RepositoryIDs) > 0 {
		ids = map[int64]bool{}
		for _, name := range req.Repositories {
			r := findInstRepo(inst, func(r *repo) bool { return strings.EqualFold(r.name, name) })
			if r == nil {
				return unprocessable(c, "There is at least one repository that does not exist or is not accessible to the parent installation.")
			}
			ids[r.id] = true
		}
		for _, id := range req.RepositoryIDs {
			r := findInstRepo(inst, func(r *repo) bool { return r.id == id })
			if r == nil {
				return unprocessable(c, "There is at least one repository that does not exist or is not accessible to the parent installation.")
			}
			ids[r.id] = true
		}
	}
	t, err := s.newToken(inst, ids, c.now)
	if err != nil {
		return jsonResponse(http.StatusInternalServerError, errorBody(err.Error(), defaultDocURL))
	}
	repos := []any{}
	for _, r := range inst.repos {
		if ids == nil || ids[r.id] {
			repos = append(repos, s.repoJSON(r))
		}
	}
	return jsonResponse(http.StatusCreated, obj{
		"token":                t.value,
		"expires_at":           ts(t.expiresAt),
		"permissions":          appPermissions(),
		"repository_selection": "selected",
		"repositories":         repos,
	})
}

func findInstRepo(inst *installation, match func(*repo) bool) *repo {
	for _, r := range inst.repos {
		if match(r) {
			return r
		}
	}
	return nil
}

// GET /installation/repositories
func (s *Sim) listInstallationRepos(c *call) *response {
	var visible []*repo
	for _, r := range c.who.tok.inst.repos {
		if c.who.reaches(r) {
			visible = append(visible, r)
		}
	}
	resp := jsonResponse(http.StatusOK, nil)
	lo, hi := s.paginate(c, len(visible), resp.header)
	page := []any{}
	for _, r := range visible[lo:hi] {
		page = append(page, s.repoJSON(r))
	}
	resp.body = obj{"total_count": len(visible), "repository_selection": "selected", "repositories": page}
	return resp
}
