package ghsim

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"
)

// TestAdminHTTP runs a pull request's life through the admin HTTP API.
func TestAdminHTTP(t *testing.T) {
	f := newFixture(t)
	call := func(method, path string, body any, wantStatus int) []byte {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, f.srv.URL+"/_ghsim"+path, rd)
		resp, err := http.DefaultClient.Do(req)
		must(t, err)
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != wantStatus {
			t.Fatalf("%s %s: %d, want %d: %s", method, path, resp.StatusCode, wantStatus, out)
		}
		return out
	}
	res := decode[Result](t, call("POST", "/repos/acme/widgets/pulls", map[string]any{
		"head": "feature", "author": "alice", "files": map[string]string{"x": "y"},
	}, 200))
	if res.Number != 1 || len(res.SHA) != 40 || res.Delivery == nil || res.Delivery.Status != 200 || res.Delivery.Event != "pull_request" {
		t.Fatalf("open PR %+v", res)
	}
	push := decode[Result](t, call("POST", "/repos/acme/widgets/pulls/1/commits", map[string]any{"files": map[string]string{"x": "z"}}, 200))
	if push.SHA == res.SHA || push.Delivery.Action != "synchronize" {
		t.Errorf("push %+v", push)
	}
	com := decode[Result](t, call("POST", "/repos/acme/widgets/pulls/1/comments", map[string]any{
		"user": "bob", "permission": "admin", "body": "/stagely deploy",
	}, 200))
	call("POST", "/repos/acme/widgets/pulls/1/comments", map[string]any{"user": "dependabot", "bot": true, "body": "hi"}, 200)
	comments := decode[[]Comment](t, call("GET", "/repos/acme/widgets/pulls/1/comments", nil, 200))
	if len(comments) != 2 || comments[0].ID != com.ID || comments[1].User != "dependabot[bot]" || comments[1].UserType != "Bot" {
		t.Errorf("comments %+v", comments)
	}
	call("PUT", "/repos/acme/widgets/permissions/carol", map[string]any{"permission": "write"}, 200)
	call("PUT", "/repos/acme/widgets/permissions/carol", map[string]any{"permission": "root"}, 400)

	tok := f.token()
	resp, body := f.do("GET", "/repos/acme/widgets/collaborators/carol/permission", tok, nil)
	wantStatus(t, resp, body, 200)
	if p := decode[map[string]any](t, body)["permission"]; p != "write" {
		t.Errorf("carol's permission %v", p)
	}
	resp, body = f.do("POST", "/repos/acme/widgets/issues/comments/"+itoa(com.ID)+"/reactions", tok, map[string]string{"content": "rocket"})
	wantStatus(t, resp, body, 201)
	reactions := decode[[]Reaction](t, call("GET", "/repos/acme/widgets/comments/"+itoa(com.ID)+"/reactions", nil, 200))
	if len(reactions) != 1 || reactions[0].Content != "rocket" || reactions[0].User != "stagely-test[bot]" {
		t.Errorf("reactions %+v", reactions)
	}

	resp, body = f.do("POST", "/repos/acme/widgets/check-runs", tok, map[string]any{
		"name": "stagely", "head_sha": push.SHA, "external_id": "e1", "conclusion": "success", // buttons show once completed
		"actions": []map[string]string{{"label": "Stop", "description": "Stop the preview", "identifier": "stop"}},
	})
	wantStatus(t, resp, body, 201)
	runs := decode[[]CheckRun](t, call("GET", "/repos/acme/widgets/check-runs?sha="+push.SHA, nil, 200))
	if len(runs) != 1 || runs[0].ExternalID != "e1" || runs[0].Status != "completed" || len(runs[0].Actions) != 1 || runs[0].AppID != 4242 {
		t.Fatalf("check runs %+v", runs)
	}
	if len(decode[[]CheckRun](t, call("GET", "/repos/acme/widgets/check-runs?sha="+res.SHA, nil, 200))) != 0 {
		t.Error("runs on the old head")
	}
	click := decode[Result](t, call("POST", "/repos/acme/widgets/check-runs/"+itoa(runs[0].ID)+"/requested-action", map[string]any{"identifier": "stop", "user": "bob"}, 200))
	if click.Delivery.Event != "check_run" || click.Delivery.Action != "requested_action" {
		t.Errorf("click %+v", click.Delivery)
	}
	call("POST", "/repos/acme/widgets/check-runs/"+itoa(runs[0].ID)+"/requested-action", map[string]any{"identifier": "nope", "user": "bob"}, 400)
	call("POST", "/repos/acme/widgets/check-runs/"+itoa(runs[0].ID)+"/rerequest", map[string]any{"user": "bob"}, 200)

	closed := decode[Result](t, call("POST", "/repos/acme/widgets/pulls/1/close", map[string]any{"merged": false}, 200))
	if closed.Delivery.Action != "closed" {
		t.Errorf("close %+v", closed)
	}
	call("POST", "/repos/acme/widgets/pulls/1/reopen", map[string]any{}, 200)
	merged := decode[Result](t, call("POST", "/repos/acme/widgets/pulls/1/close", map[string]any{"merged": true, "user": "bob"}, 200))
	if merged.SHA == "" {
		t.Error("merge gave no commit")
	}
	call("POST", "/repos/acme/widgets/pulls/1/reopen", map[string]any{}, 400) // merged PRs stay closed
	resp, body = f.do("GET", "/repos/acme/widgets/contents/x", tok, nil)
	wantStatus(t, resp, body, 200) // the merge landed on main

	deliveries := decode[[]Delivery](t, call("GET", "/deliveries", nil, 200))
	last := deliveries[len(deliveries)-1]
	again := decode[Delivery](t, call("POST", "/deliveries/"+last.GUID+"/redeliver", nil, 200))
	if again.GUID != last.GUID || !again.Redelivery || compact(t, again.Payload) != compact(t, last.Payload) {
		t.Errorf("redelivery %+v", again)
	}

	call("POST", "/faults", map[string]any{"kind": "bad_gateway", "path_prefix": "/repos/acme/widgets/pulls"}, 200)
	resp, body = f.do("GET", "/repos/acme/widgets/pulls/1", tok, nil)
	wantStatus(t, resp, body, 502)
	call("POST", "/faults", map[string]any{"kind": "bad_gateway"}, 200)
	call("DELETE", "/faults", nil, 204)
	resp, body = f.do("GET", "/repos/acme/widgets/pulls/1", tok, nil)
	wantStatus(t, resp, body, 200)

	call("POST", "/clock/advance", map[string]any{"duration": "61m"}, 200)
	resp, body = f.do("GET", "/repos/acme/widgets", tok, nil)
	wantStatus(t, resp, body, 401)
	call("POST", "/clock/advance", map[string]any{"duration": "soon"}, 400)

	reqs := decode[[]Request](t, call("GET", "/requests", nil, 200))
	if len(reqs) == 0 || reqs[len(reqs)-1].Status != 401 {
		t.Errorf("requests %+v", reqs)
	}
	call("POST", "/installations", map[string]any{"account": "acme"}, 400) // installed already
	call("POST", "/repos", map[string]any{"owner": "nobody", "name": "x"}, 400)
	call("POST", "/repos", map[string]any{"owner": "acme", "name": "x", "typo": 1}, 400)
	call("GET", "/nothing", nil, 404)
	call("PUT", "/webhook", map[string]any{"url": ""}, 200)
	if d := decode[Result](t, call("POST", "/repos/acme/widgets/pulls", map[string]any{"head": "two"}, 200)).Delivery; d.Status != 0 {
		t.Errorf("delivered without a webhook URL: %+v", d)
	}
}

func compact(t *testing.T, b []byte) string {
	t.Helper()
	var buf bytes.Buffer
	must(t, json.Compact(&buf, b))
	return buf.String()
}
