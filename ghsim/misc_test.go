package ghsim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3filter"
)

func TestRecordFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rec.jsonl")
	f := newFixture(t, func(c *Config) { c.RecordPath = path })
	tok := f.token()
	f.do("GET", "/repos/acme/widgets/commits/main/check-runs?check_name=stagely&per_page=5", tok, nil)
	f.do("POST", "/repos/acme/widgets/check-runs", tok, map[string]any{"name": "stagely", "head_sha": f.sha, "status": "bogus"})
	f.do("POST", "/repos/acme/widgets/check-runs", tok, "not json")
	f.do("GET", "/nope", tok, nil)
	must(t, f.sim.Close())

	file, err := os.Open(path)
	must(t, err)
	defer file.Close()
	var recs []map[string]any
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		var m map[string]any
		must(t, json.Unmarshal(sc.Bytes(), &m))
		recs = append(recs, m)
	}
	if len(recs) != 4 {
		t.Fatalf("%d lines, want 4", len(recs))
	}
	q := recs[0]["query"].(map[string]any)
	if recs[0]["method"] != "GET" || recs[0]["path"] != "/repos/acme/widgets/commits/main/check-runs" ||
		q["check_name"].([]any)[0] != "stagely" || recs[0]["status"] != 200.0 || recs[0]["valid"] != true ||
		recs[0]["operation"] != "checks/list-for-ref" {
		t.Errorf("line 1: %v", recs[0])
	}
	body := recs[1]["body"].(map[string]any)
	if recs[1]["method"] != "POST" || body["status"] != "bogus" || recs[1]["status"] != 422.0 || recs[1]["valid"] != false || recs[1]["error"] == "" {
		t.Errorf("line 2: %v", recs[1])
	}
	if recs[2]["body"] != "not json" || recs[2]["status"] != 400.0 {
		t.Errorf("line 3: %v", recs[2])
	}
	if recs[3]["status"] != 404.0 || recs[3]["valid"] != false {
		t.Errorf("line 4: %v", recs[3])
	}
	mem := f.sim.Requests()
	if len(mem) != 4 || mem[1].Valid || !mem[0].Valid {
		t.Errorf("in-memory records %+v", mem)
	}
}

func TestFaults(t *testing.T) {
	f := newFixture(t)
	tok := f.token()
	must(t, f.sim.AddFault(Fault{Kind: FaultSecondaryRateLimit, Method: "POST", PathPrefix: "/repos/acme/widgets/check-runs", Times: 2, RetryAfter: 30}))
	must(t, f.sim.AddFault(Fault{Kind: FaultBadGateway, PathPrefix: "/repos/acme/widgets/pulls"}))
	if err := f.sim.AddFault(Fault{Kind: "meteor"}); err == nil {
		t.Error("unknown fault kind accepted")
	}
	body := map[string]any{"name": "x", "head_sha": f.sha}
	for i := range 2 {
		resp, b := f.do("POST", "/repos/acme/widgets/check-runs", tok, body)
		wantStatus(t, resp, b, 403)
		if resp.Header.Get("Retry-After") != "30" || !strings.Contains(string(b), "secondary rate limit") {
			t.Errorf("try %d: %v %s", i, resp.Header, b)
		}
	}
	resp, b := f.do("GET", "/repos/acme/widgets", tok, nil) // other paths are unaffected
	wantStatus(t, resp, b, 200)
	resp, b = f.do("POST", "/repos/acme/widgets/check-runs", tok, body)
	wantStatus(t, resp, b, 201)
	resp, b = f.do("GET", "/repos/acme/widgets/pulls/1", tok, nil)
	wantStatus(t, resp, b, 502)
	resp, b = f.do("GET", "/repos/acme/widgets/pulls/1", tok, nil)
	wantStatus(t, resp, b, 404) // the fault is used up; there is no PR 1

	must(t, f.sim.AddFault(Fault{Kind: FaultRateLimit, Times: 3}))
	f.sim.ClearFaults()
	resp, b = f.do("GET", "/repos/acme/widgets", tok, nil)
	wantStatus(t, resp, b, 200)
	if resp.Header.Get("X-RateLimit-Limit") != "5000" || resp.Header.Get("X-RateLimit-Resource") != "core" {
		t.Errorf("rate limit headers %v", resp.Header)
	}
}

// TestForkPR: a pull request from a fork has a head repository the App
// cannot see, yet its head commit is readable through the base repository,
// as on GitHub.
func TestForkPR(t *testing.T) {
	f := newFixture(t)
	pr := f.openPR(PRSpec{Head: "patch-1", ForkOwner: "mallory", Files: map[string]string{"stagely.yaml": "version: 2\n"}})
	tok := f.token()
	resp, body := f.do("GET", "/repos/acme/widgets/pulls/1", tok, nil)
	wantStatus(t, resp, body, 200)
	p := decode[struct {
		User struct{ Login string }
		Head struct {
			Label, SHA string
			Repo       struct {
				FullName string `json:"full_name"`
				Fork     bool
			}
		}
		Base struct {
			Repo struct {
				FullName string `json:"full_name"`
			}
		}
	}](t, body)
	if p.User.Login != "mallory" || p.Head.Label != "mallory:patch-1" || p.Head.Repo.FullName != "mallory/widgets" || !p.Head.Repo.Fork ||
		p.Base.Repo.FullName != "acme/widgets" || p.Head.SHA != pr.SHA {
		t.Errorf("fork PR %+v", p)
	}
	resp, body = f.do("GET", "/repos/acme/widgets/contents/stagely.yaml?ref="+pr.SHA, tok, nil)
	wantStatus(t, resp, body, 200)
	resp, body = f.do("GET", "/repos/mallory/widgets", tok, nil)
	wantStatus(t, resp, body, 404)
	resp, body = f.do("POST", "/repos/acme/widgets/check-runs", tok, map[string]any{"name": "stagely", "head_sha": pr.SHA})
	wantStatus(t, resp, body, 201)
	if prs := decode[struct {
		PullRequests []any `json:"pull_requests"`
	}](t, body).PullRequests; len(prs) != 0 {
		t.Errorf("check run on a fork head lists PRs %v (GitHub lists none)", prs)
	}
	res, err := f.sim.PushToPR(f.ctx, PushSpec{Owner: "acme", Repo: "widgets", Number: pr.Number, Files: map[string]string{"b": "c"}})
	must(t, err)
	var ev struct {
		PullRequest struct {
			Head struct {
				SHA  string
				Repo struct {
					FullName string `json:"full_name"`
				}
			}
		} `json:"pull_request"`
	}
	must(t, json.Unmarshal(res.Delivery.Payload, &ev))
	if ev.PullRequest.Head.Repo.FullName != "mallory/widgets" || ev.PullRequest.Head.SHA != res.SHA {
		t.Errorf("synchronize from fork %+v", ev)
	}
}

// TestResponsesMatchSpec validates the simulator's answers with
// openapi3filter.ValidateResponse directly, independently of the
// CheckResponses option the other tests rely on.
func TestResponsesMatchSpec(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.CheckResponses = false })
	pr := f.openPR(PRSpec{Head: "feature", Files: map[string]string{"dir/f.txt": "f"}})
	tok := f.token()
	resp, body := f.do("POST", "/repos/acme/widgets/check-runs", tok, map[string]any{
		"name": "s", "head_sha": pr.SHA, "conclusion": "failure", "output": map[string]string{"title": "t", "summary": "s", "text": "x"},
		"actions": []map[string]string{{"label": "l", "description": "d", "identifier": "i"}},
	})
	wantStatus(t, resp, body, 201)
	runID := itoa(decode[struct{ ID int64 }](t, body).ID)
	resp, body = f.do("POST", "/repos/acme/widgets/issues/1/comments", tok, map[string]string{"body": "hello"})
	wantStatus(t, resp, body, 201)
	commentID := itoa(decode[struct{ ID int64 }](t, body).ID)
	jwt := f.jwt()

	calls := []struct {
		method, path, auth string
		body               any
	}{
		{"GET", "/app", jwt, nil},
		{"GET", "/app/installations/" + itoa(f.inst), jwt, nil},
		{"POST", "/app/installations/" + itoa(f.inst) + "/access_tokens", jwt, nil},
		{"GET", "/app/installations/1", jwt, nil},
		{"GET", "/installation/repositories", tok, nil},
		{"GET", "/repos/acme/widgets", tok, nil},
		{"GET", "/repos/acme/nope", tok, nil},
		{"GET", "/repos/acme/widgets/pulls/1", tok, nil},
		{"GET", "/repos/acme/widgets/pulls/2", tok, nil},
		{"GET", "/repos/acme/widgets/contents/dir/f.txt?ref=" + pr.SHA, tok, nil},
		{"GET", "/repos/acme/widgets/contents/dir?ref=" + pr.SHA, tok, nil},
		{"GET", "/repos/acme/widgets/contents/none?ref=" + pr.SHA, tok, nil},
		{"GET", "/repos/acme/widgets/tarball/" + pr.SHA, tok, nil},
		{"GET", "/repos/acme/widgets/check-runs/" + runID, tok, nil},
		{"PATCH", "/repos/acme/widgets/check-runs/" + runID, tok, map[string]any{"status": "in_progress"}},
		{"GET", "/repos/acme/widgets/commits/" + pr.SHA + "/check-runs", tok, nil},
		{"GET", "/repos/acme/widgets/issues/1/comments", tok, nil},
		{"POST", "/repos/acme/widgets/issues/1/comments", tok, map[string]string{"body": "again"}},
		{"POST", "/repos/acme/widgets/issues/1/comments", tok, map[string]string{"body": strings.Repeat("x", 70000)}},
		{"GET", "/repos/acme/widgets/issues/comments/" + commentID, tok, nil},
		{"PATCH", "/repos/acme/widgets/issues/comments/" + commentID, tok, map[string]string{"body": "edited"}},
		{"POST", "/repos/acme/widgets/issues/comments/" + commentID + "/reactions", tok, map[string]string{"content": "+1"}},
		{"POST", "/repos/acme/widgets/issues/comments/" + commentID + "/reactions", tok, map[string]string{"content": "+1"}},
		{"GET", "/repos/acme/widgets/issues/comments/" + commentID + "/reactions", tok, nil},
		{"GET", "/repos/acme/widgets/collaborators/acme-admin/permission", tok, nil},
	}
	for _, c := range calls {
		var rd io.Reader
		var raw []byte
		if c.body != nil {
			raw, _ = json.Marshal(c.body)
			rd = bytes.NewReader(raw)
		}
		req, _ := http.NewRequest(c.method, f.srv.URL+c.path, rd)
		req.Header.Set("Authorization", "Bearer "+c.auth)
		if rd != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := noRedirect().Do(req)
		must(t, err)
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()

		path, _, _ := strings.Cut(c.path, "?")
		sr, params, ok := f.sim.spec.match(c.method, path)
		if !ok {
			t.Fatalf("%s %s: no route", c.method, c.path)
		}
		vreq, _ := http.NewRequest(c.method, f.srv.URL+c.path, bytes.NewReader(raw))
		in := &openapi3filter.ResponseValidationInput{
			RequestValidationInput: &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: sr.route},
			Status:                 resp.StatusCode,
			Header:                 resp.Header,
			Options:                &openapi3filter.Options{IncludeResponseStatus: resp.StatusCode < 400},
		}
		in.SetBodyBytes(got)
		if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
			t.Errorf("%s %s (%d): %s", c.method, c.path, resp.StatusCode, conciseError(err))
		}
	}
}
