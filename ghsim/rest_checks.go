package ghsim

import (
	"net/http"
	"sort"
	"strconv"
	"time"
)

// CheckRunAction is a button on a check run.
type CheckRunAction struct {
	Label       string `json:"label"`
	Description string `json:"description"`
	Identifier  string `json:"identifier"`
}

// checkRunInput is the body of POST and PATCH check-runs; pointers tell
// absent from empty.
type checkRunInput struct {
	Name        *string          `json:"name"`
	HeadSHA     *string          `json:"head_sha"`
	DetailsURL  *string          `json:"details_url"`
	ExternalID  *string          `json:"external_id"`
	Status      *string          `json:"status"`
	Conclusion  *string          `json:"conclusion"`
	StartedAt   *time.Time       `json:"started_at"`
	CompletedAt *time.Time       `json:"completed_at"`
	Actions     []CheckRunAction `json:"actions"`
	HasActions  bool             `json:"-"`
	Output      *struct {
		Title       *string `json:"title"`
		Summary     *string `json:"summary"`
		Text        *string `json:"text"`
		Annotations []any   `json:"annotations"`
	} `json:"output"`
}

func (c *call) decodeCheckRun() (*checkRunInput, *response) {
	var in checkRunInput
	if err := c.decode(&in); err != nil {
		return nil, jsonResponse(http.StatusBadRequest, errorBody("Problems parsing JSON", c.docURL()))
	}
	var raw map[string]any
	_ = c.decode(&raw)
	_, in.HasActions = raw["actions"]
	return &in, nil
}

// POST /repos/{owner}/{repo}/check-runs
func (s *Sim) createCheckRun(c *call) *response {
	in, bad := c.decodeCheckRun()
	if bad != nil {
		return bad
	}
	if c.repo.commits[*in.HeadSHA] == nil {
		return unprocessable(c, "No commit found for SHA: "+*in.HeadSHA)
	}
	details := s.baseURL // GitHub defaults details_url to the App's homepage
	cr := &checkRun{
		id:         s.st.newID(),
		suiteID:    s.st.suiteFor(c.repo, *in.HeadSHA),
		headSHA:    *in.HeadSHA,
		name:       *in.Name,
		status:     "queued",
		externalID: ptrTo(""),
		detailsURL: &details,
		startedAt:  c.now,
	}
	if resp := applyCheckRun(c, cr, in); resp != nil {
		return resp
	}
	c.repo.checkRuns = append(c.repo.checkRuns, cr)
	return jsonResponse(http.StatusCreated, s.checkRunJSON(c.repo, cr))
}

// GET /repos/{owner}/{repo}/check-runs/{check_run_id}
func (s *Sim) getCheckRun(c *call) *response {
	cr := c.repo.findCheckRun(c.intParam("check_run_id"))
	if cr == nil {
		return notFound(c)
	}
	return jsonResponse(http.StatusOK, s.checkRunJSON(c.repo, cr))
}

// PATCH /repos/{owner}/{repo}/check-runs/{check_run_id}
func (s *Sim) updateCheckRun(c *call) *response {
	cr := c.repo.findCheckRun(c.intParam("check_run_id"))
	if cr == nil {
		return notFound(c)
	}
	in, bad := c.decodeCheckRun()
	if bad != nil {
		return bad
	}
	next := *cr
	if resp := applyCheckRun(c, &next, in); resp != nil {
		return resp
	}
	*cr = next
	return jsonResponse(http.StatusOK, s.checkRunJSON(c.repo, cr))
}

// applyCheckRun applies a create/update body with GitHub's rules: a
// conclusion completes the run, completing needs a conclusion, and "stale"
// is GitHub's to set.
func applyCheckRun(c *call, cr *checkRun, in *checkRunInput) *response {
	if in.Name != nil {
		cr.name = *in.Name
	}
	if in.DetailsURL != nil {
		cr.detailsURL = in.DetailsURL
	}
	if in.ExternalID != nil {
		cr.externalID = in.ExternalID
	}
	if in.StartedAt != nil {
		cr.startedAt = in.StartedAt.UTC()
	}
	if in.Status != nil {
		cr.status = *in.Status
	}
	if in.Conclusion != nil {
		if *in.Conclusion == "stale" {
			return validationFailed(c, fieldError{Resource: "CheckRun", Field: "conclusion", Code: "invalid",
				Message: "conclusion stale can only be set by GitHub"})
		}
		cr.conclusion = *in.Conclusion
		cr.status = "completed"
	}
	if in.CompletedAt != nil {
		cr.completedAt = in.CompletedAt.UTC()
	}
	if cr.status == "completed" || in.CompletedAt != nil {
		if cr.conclusion == "" {
			return validationFailed(c, fieldError{Resource: "CheckRun", Field: "conclusion", Code: "missing_field",
				Message: "conclusion is required when status is completed or completed_at is given"})
		}
		cr.status = "completed"
		if cr.completedAt.IsZero() {
			cr.completedAt = c.now
		}
	} else if cr.conclusion != "" && cr.status != "completed" {
		// Re-queueing a completed run clears its result, as GitHub does.
		cr.conclusion, cr.completedAt = "", time.Time{}
	}
	if in.Output != nil {
		cr.output = checkOutput{title: in.Output.Title, summary: in.Output.Summary, text: in.Output.Text}
		cr.annotations += len(in.Output.Annotations)
	}
	if in.HasActions {
		cr.actions = append([]CheckRunAction(nil), in.Actions...)
	}
	return nil
}

// GET /repos/{owner}/{repo}/commits/{ref}/check-runs
func (s *Sim) listCheckRunsForRef(c *call) *response {
	cm := c.repo.resolveRef(c.params["ref"])
	if cm == nil {
		return unprocessable(c, "No commit found for SHA: "+c.params["ref"])
	}
	name, status, filter := c.query.Get("check_name"), c.query.Get("status"), c.query.Get("filter")
	appID, _ := strconv.ParseInt(c.query.Get("app_id"), 10, 64)
	var runs []*checkRun
	latest := map[string]bool{}
	// Newest first, as GitHub lists them; "latest" keeps the newest per name.
	for i := len(c.repo.checkRuns) - 1; i >= 0; i-- {
		cr := c.repo.checkRuns[i]
		if cr.headSHA != cm.sha || (name != "" && cr.name != name) || (status != "" && cr.status != status) {
			continue
		}
		if appID != 0 && appID != s.cfg.AppID {
			continue
		}
		if filter != "all" {
			if latest[cr.name] {
				continue
			}
			latest[cr.name] = true
		}
		runs = append(runs, cr)
	}
	sort.SliceStable(runs, func(i, j int) bool { return runs[i].id > runs[j].id })
	resp := jsonResponse(http.StatusOK, nil)
	lo, hi := s.paginate(c, len(runs), resp.header)
	page := []any{}
	for _, cr := range runs[lo:hi] {
		page = append(page, s.checkRunJSON(c.repo, cr))
	}
	resp.body = obj{"total_count": len(runs), "check_runs": page}
	return resp
}

func ptrTo[T any](v T) *T { return &v }
