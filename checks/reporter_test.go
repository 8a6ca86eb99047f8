package checks

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-github/v60/github"
)

// fakeChecks is a GitHub Checks API in memory: it lists (in pages of
// pageSize, with Link headers), creates and updates check runs, and keeps
// the JSON body of every write so tests can check request shapes.
type fakeChecks struct {
	t        *testing.T
	pageSize int

	mu      sync.Mutex
	runs    []*github.CheckRun
	creates []map[string]any
	updates []map[string]any
	lists   []url.Values
}

func newFakeChecks(t *testing.T) (*fakeChecks, *Reporter) {
	f := &fakeChecks{t: t, pageSize: 2}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	client := github.NewClient(srv.Client())
	base, err := url.Parse(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	client.BaseURL = base
	return f, NewReporter(client.Checks)
}

func (f *fakeChecks) add(name, sha, externalID string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := int64(1000 + len(f.runs))
	f.runs = append(f.runs, &github.CheckRun{ID: github.Int64(id), Name: github.String(name), HeadSHA: github.String(sha), ExternalID: github.String(externalID)})
	return id
}

func (f *fakeChecks) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case r.Method == http.MethodGet && len(parts) == 6 && parts[3] == "commits" && parts[5] == "check-runs":
		q := r.URL.Query()
		f.lists = append(f.lists, q)
		var match []*github.CheckRun
		for _, run := range f.runs {
			if run.GetHeadSHA() == parts[4] && (q.Get("check_name") == "" || run.GetName() == q.Get("check_name")) {
				match = append(match, run)
			}
		}
		page, _ := strconv.Atoi(q.Get("page"))
		page = max(page, 1)
		last := max(1, (len(match)+f.pageSize-1)/f.pageSize)
		lo, hi := min((page-1)*f.pageSize, len(match)), min(page*f.pageSize, len(match))
		if page < last {
			next := *r.URL
			q.Set("page", strconv.Itoa(page+1))
			next.RawQuery = q.Encode()
			w.Header().Set("Link", fmt.Sprintf(`<http://%s%s>; rel="next"`, r.Host, next.String()))
		}
		writeJSON(w, http.StatusOK, github.ListCheckRunsResults{Total: github.Int(len(match)), CheckRuns: match[lo:hi]})
	case r.Method == http.MethodPost && len(parts) == 4 && parts[3] == "check-runs":
		body := decode(f.t, r)
		f.creates = append(f.creates, body)
		id := int64(1000 + len(f.runs))
		run := &github.CheckRun{ID: github.Int64(id), Name: github.String(body["name"].(string)), HeadSHA: github.String(body["head_sha"].(string))}
		if ext, ok := body["external_id"].(string); ok {
			run.ExternalID = github.String(ext)
		}
		f.runs = append(f.runs, run)
		writeJSON(w, http.StatusCreated, run)
	case r.Method == http.MethodPatch && len(parts) == 5 && parts[3] == "check-runs":
		body := decode(f.t, r)
		body["id"] = parts[4]
		f.updates = append(f.updates, body)
		id, _ := strconv.ParseInt(parts[4], 10, 64)
		writeJSON(w, http.StatusOK, github.CheckRun{ID: github.Int64(id)})
	default:
		http.Error(w, `{"message":"Not Found"}`, http.StatusNotFound)
	}
}

func decode(t *testing.T, r *http.Request) map[string]any {
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		t.Errorf("%s %s: body is not JSON: %v", r.Method, r.URL.Path, err)
	}
	return body
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func TestEnsureCreatesOnceThenFindsTheSameRun(t *testing.T) {
	f, rep := newFakeChecks(t)
	ctx := context.Background()
	r := reports()["queued"]

	id1, err := rep.Ensure(ctx, "acme", "shop", sha, "deployment-7", r)
	if err != nil {
		t.Fatal(err)
	}
	id2, err := rep.Ensure(ctx, "acme", "shop", sha, "deployment-7", r)
	if err != nil {
		t.Fatal(err)
	}
	if id1 == 0 || id1 != id2 {
		t.Errorf("ids %d and %d, want the same non-zero id", id1, id2)
	}
	if len(f.creates) != 1 {
		t.Fatalf("%d creates, want 1", len(f.creates))
	}
	c := f.creates[0]
	for key, want := range map[string]any{"name": CheckName, "head_sha": sha, "external_id": "deployment-7", "status": "queued"} {
		if c[key] != want {
			t.Errorf("create %s = %v, want %v", key, c[key], want)
		}
	}
	if _, ok := c["conclusion"]; ok {
		t.Errorf("a queued run was created with a conclusion: %v", c)
	}
	out, _ := c["output"].(map[string]any)
	if out["title"] != "Queued" || out["summary"] == "" {
		t.Errorf("create output = %v", out)
	}
	for _, q := range f.lists {
		if q.Get("check_name") != CheckName || q.Get("filter") != "all" {
			t.Errorf("list query %v: want check_name=%q and filter=all", q, CheckName)
		}
	}
}

func TestEnsureFindsExistingRunByExternalIDOnTheLastPage(t *testing.T) {
	f, rep := newFakeChecks(t)
	f.add(CheckName, sha, "deployment-1")
	f.add("other check", sha, "deployment-9") // filtered out by check_name
	f.add(CheckName, sha, "deployment-2")
	f.add(CheckName, sha, "")
	f.add(CheckName, "0000000000000000000000000000000000000000", "deployment-9") // other commit
	f.add(CheckName, sha, "deployment-3")
	want := f.add(CheckName, sha, "deployment-9") // page 3 of 3

	got, err := rep.Ensure(context.Background(), "acme", "shop", sha, "deployment-9", reports()["queued"])
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("Ensure = %d, want the existing run %d", got, want)
	}
	if len(f.creates) != 0 {
		t.Errorf("Ensure created a second run: %v", f.creates)
	}
	if len(f.lists) != 3 {
		t.Errorf("%d list requests, want 3 pages", len(f.lists))
	}
}

func TestEnsureCreatesWhenOnlyOtherAttemptsExist(t *testing.T) {
	f, rep := newFakeChecks(t)
	old := f.add(CheckName, sha, "deployment-1")
	got, err := rep.Ensure(context.Background(), "acme", "shop", sha, "deployment-2", reports()["queued"])
	if err != nil {
		t.Fatal(err)
	}
	if got == old || len(f.creates) != 1 {
		t.Errorf("Ensure = %d (old run %d), %d creates", got, old, len(f.creates))
	}
}

func TestEnsureCanCreateACompletedRun(t *testing.T) {
	f, rep := newFakeChecks(t)
	if _, err := rep.Ensure(context.Background(), "acme", "shop", sha, "deployment-1", reports()["action_required"]); err != nil {
		t.Fatal(err)
	}
	c := f.creates[0]
	if c["status"] != "completed" || c["conclusion"] != "action_required" || c["completed_at"] != "2024-05-01T12:00:00Z" {
		t.Errorf("create = %v", c)
	}
	acts, _ := c["actions"].([]any)
	if len(acts) != 1 || acts[0].(map[string]any)["identifier"] != ActionDeploy {
		t.Errorf("actions = %v", c["actions"])
	}
}

func TestEnsureRejectsAnEmptyExternalID(t *testing.T) {
	f, rep := newFakeChecks(t)
	if _, err := rep.Ensure(context.Background(), "acme", "shop", sha, "", reports()["queued"]); err == nil {
		t.Fatal("Ensure accepted an empty external id")
	}
	if len(f.lists)+len(f.creates) != 0 {
		t.Error("Ensure called GitHub")
	}
}

func TestUpdateSendsConclusionDetailsURLOutputAndActions(t *testing.T) {
	f, rep := newFakeChecks(t)
	if err := rep.Update(context.Background(), "acme", "shop", 1234, reports()["success"]); err != nil {
		t.Fatal(err)
	}
	if len(f.updates) != 1 {
		t.Fatalf("%d updates", len(f.updates))
	}
	u := f.updates[0]
	for key, want := range map[string]any{
		"id":           "1234",
		"name":         CheckName,
		"status":       "completed",
		"conclusion":   "success",
		"completed_at": "2024-05-01T12:10:00Z",
		"details_url":  previews[0].URL,
	} {
		if u[key] != want {
			t.Errorf("update %s = %v, want %v", key, u[key], want)
		}
	}
	out, _ := u["output"].(map[string]any)
	if out["title"] == "" || !strings.Contains(fmt.Sprint(out["summary"]), previews[1].URL) {
		t.Errorf("output = %v", out)
	}
	var ids []string
	for _, a := range u["actions"].([]any) {
		ids = append(ids, a.(map[string]any)["identifier"].(string))
	}
	if strings.Join(ids, ",") != "redeploy,destroy" {
		t.Errorf("actions %v", ids)
	}
}

func TestUpdateInProgressSendsNoConclusion(t *testing.T) {
	f, rep := newFakeChecks(t)
	if err := rep.Update(context.Background(), "acme", "shop", 1, reports()["in_progress"]); err != nil {
		t.Fatal(err)
	}
	u := f.updates[0]
	if u["status"] != "in_progress" {
		t.Errorf("status = %v", u["status"])
	}
	for _, key := range []string{"conclusion", "completed_at", "details_url"} {
		if _, ok := u[key]; ok {
			t.Errorf("in-progress update sends %s: %v", key, u[key])
		}
	}
}

func TestUpdateRejectsAnInvalidReportWithoutCallingGitHub(t *testing.T) {
	f, rep := newFakeChecks(t)
	err := rep.Update(context.Background(), "acme", "shop", 1, Report{Status: "completed"})
	if err == nil || !strings.Contains(err.Error(), "update check run 1 on acme/shop") {
		t.Errorf("err = %v", err)
	}
	if len(f.updates) != 0 {
		t.Error("Update called GitHub")
	}
}

func TestReporterErrorsSayWhichRunAndRepository(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"message":"boom"}`, http.StatusInternalServerError)
	}))
	defer srv.Close()
	client := github.NewClient(srv.Client())
	client.BaseURL, _ = url.Parse(srv.URL + "/")
	rep := NewReporter(client.Checks)

	_, err := rep.Ensure(context.Background(), "acme", "shop", sha, "deployment-1", Report{})
	if err == nil || !strings.Contains(err.Error(), `find check run "deployment-1" on acme/shop@3f2c9a1`) {
		t.Errorf("Ensure err = %v", err)
	}
}
