package ghsim

import (
	"strings"
	"testing"
)

func TestRequestValidation(t *testing.T) {
	f := newFixture(t)
	f.openPR(PRSpec{Head: "feature", Files: map[string]string{"a.txt": "a\n"}})
	tok := f.token()
	action := func(id string) map[string]string {
		return map[string]string{"label": "Go", "description": "Do it", "identifier": id}
	}
	run := func(mod func(map[string]any)) map[string]any {
		b := map[string]any{"name": "stagely", "head_sha": f.sha}
		if mod != nil {
			mod(b)
		}
		return b
	}
	tests := []struct {
		name       string
		method     string
		path       string
		body       any
		wantStatus int
		wantValid  bool
		wantField  string // an errors[].field of the 422
		wantCode   string
		wantMsg    string // the message, for non-"Validation Failed" answers
	}{
		{name: "valid check run", method: "POST", path: "/repos/acme/widgets/check-runs", body: run(nil), wantStatus: 201, wantValid: true},
		{name: "three actions", method: "POST", path: "/repos/acme/widgets/check-runs", body: run(func(b map[string]any) {
			b["actions"] = []any{action("a"), action("b"), action("c")}
		}), wantStatus: 201, wantValid: true},
		{name: "four actions", method: "POST", path: "/repos/acme/widgets/check-runs", body: run(func(b map[string]any) {
			b["actions"] = []any{action("a"), action("b"), action("c"), action("d")}
		}), wantStatus: 422, wantField: "actions", wantCode: "invalid"},
		{name: "action label of 21 chars", method: "POST", path: "/repos/acme/widgets/check-runs", body: run(func(b map[string]any) {
			b["actions"] = []any{map[string]string{"label": strings.Repeat("x", 21), "description": "d", "identifier": "i"}}
		}), wantStatus: 422, wantField: "actions.0.label"},
		{name: "action description of 41 chars", method: "POST", path: "/repos/acme/widgets/check-runs", body: run(func(b map[string]any) {
			b["actions"] = []any{map[string]string{"label": "l", "description": strings.Repeat("x", 41), "identifier": "i"}}
		}), wantStatus: 422, wantField: "actions.0.description"},
		{name: "action identifier of 21 chars", method: "POST", path: "/repos/acme/widgets/check-runs", body: run(func(b map[string]any) {
			b["actions"] = []any{action(strings.Repeat("x", 21))}
		}), wantStatus: 422, wantField: "actions.0.identifier"},
		{name: "action without identifier", method: "POST", path: "/repos/acme/widgets/check-runs", body: run(func(b map[string]any) {
			b["actions"] = []any{map[string]string{"label": "l", "description": "d"}}
		}), wantStatus: 422, wantField: "actions.0.identifier", wantCode: "missing_field"},
		{name: "bad status", method: "POST", path: "/repos/acme/widgets/check-runs", body: run(func(b map[string]any) { b["status"] = "done" }),
			wantStatus: 422, wantField: "status", wantCode: "invalid"},
		{name: "missing head_sha", method: "POST", path: "/repos/acme/widgets/check-runs", body: map[string]any{"name": "x"},
			wantStatus: 422, wantField: "head_sha", wantCode: "missing_field"},
		{name: "summary too long", method: "POST", path: "/repos/acme/widgets/check-runs", body: run(func(b map[string]any) {
			b["output"] = map[string]string{"title": "t", "summary": strings.Repeat("x", 65536)}
		}), wantStatus: 422, wantField: "output.summary"},
		{name: "title too long", method: "POST", path: "/repos/acme/widgets/check-runs", body: run(func(b map[string]any) {
			b["output"] = map[string]string{"title": strings.Repeat("x", 65536), "summary": "s"}
		}), wantStatus: 422, wantField: "output.title"},
		{name: "text of 65535 chars", method: "POST", path: "/repos/acme/widgets/check-runs", body: run(func(b map[string]any) {
			b["output"] = map[string]string{"title": "t", "summary": "s", "text": strings.Repeat("é", 65535)}
		}), wantStatus: 201, wantValid: true},
		{name: "output without summary", method: "POST", path: "/repos/acme/widgets/check-runs", body: run(func(b map[string]any) {
			b["output"] = map[string]string{"title": "t"}
		}), wantStatus: 422, wantField: "output.summary", wantCode: "missing_field"},
		{name: "bad started_at", method: "POST", path: "/repos/acme/widgets/check-runs", body: run(func(b map[string]any) { b["started_at"] = "yesterday" }),
			wantStatus: 422, wantField: "started_at"},
		{name: "completed without conclusion", method: "POST", path: "/repos/acme/widgets/check-runs", body: run(func(b map[string]any) { b["status"] = "completed" }),
			wantStatus: 422, wantValid: true, wantField: "conclusion"},
		{name: "unknown head_sha", method: "POST", path: "/repos/acme/widgets/check-runs", body: run(func(b map[string]any) { b["head_sha"] = strings.Repeat("a", 40) }),
			wantStatus: 422, wantValid: true, wantMsg: "No commit found for SHA: " + strings.Repeat("a", 40)},
		{name: "not JSON", method: "POST", path: "/repos/acme/widgets/check-runs", body: "{name:", wantStatus: 400, wantMsg: "Problems parsing JSON"},
		{name: "no body", method: "POST", path: "/repos/acme/widgets/check-runs", wantStatus: 422},
		{name: "comment", method: "POST", path: "/repos/acme/widgets/issues/1/comments", body: map[string]string{"body": strings.Repeat("x", 65536)},
			wantStatus: 201, wantValid: true},
		{name: "comment too long", method: "POST", path: "/repos/acme/widgets/issues/1/comments", body: map[string]string{"body": strings.Repeat("x", 65537)},
			wantStatus: 422, wantField: "body", wantCode: "custom"},
		{name: "comment body not a string", method: "POST", path: "/repos/acme/widgets/issues/1/comments", body: map[string]any{"body": 3},
			wantStatus: 422, wantField: "body"},
		{name: "comment on a missing PR", method: "POST", path: "/repos/acme/widgets/issues/9/comments", body: map[string]string{"body": "x"},
			wantStatus: 404, wantValid: true},
		{name: "bad reaction", method: "POST", path: "/repos/acme/widgets/issues/comments/1/reactions", body: map[string]string{"content": "party"},
			wantStatus: 422, wantField: "content"},
		{name: "non-numeric path parameter", method: "GET", path: "/repos/acme/widgets/check-runs/abc", wantStatus: 404},
		{name: "bad query parameter", method: "GET", path: "/repos/acme/widgets/commits/main/check-runs?filter=newest", wantStatus: 422, wantField: "filter"},
		{name: "unknown endpoint", method: "GET", path: "/repos/acme/widgets/branches", wantStatus: 404},
		{name: "unknown method", method: "DELETE", path: "/repos/acme/widgets", wantStatus: 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := f.do(tt.method, tt.path, tok, tt.body)
			wantStatus(t, resp, body, tt.wantStatus)
			reqs := f.sim.Requests()
			rec := reqs[len(reqs)-1]
			if rec.Valid != tt.wantValid {
				t.Errorf("recorded valid=%v, want %v (error %q)", rec.Valid, tt.wantValid, rec.Error)
			}
			if rec.Status != tt.wantStatus {
				t.Errorf("recorded status %d", rec.Status)
			}
			var got struct {
				Message          string       `json:"message"`
				DocumentationURL string       `json:"documentation_url"`
				Errors           []fieldError `json:"errors"`
			}
			if resp.StatusCode >= 400 {
				got = decode[struct {
					Message          string       `json:"message"`
					DocumentationURL string       `json:"documentation_url"`
					Errors           []fieldError `json:"errors"`
				}](t, body)
				if got.DocumentationURL == "" {
					t.Errorf("no documentation_url in %s", body)
				}
			}
			if tt.wantMsg != "" && got.Message != tt.wantMsg {
				t.Errorf("message %q, want %q", got.Message, tt.wantMsg)
			}
			if tt.wantField != "" {
				if got.Message != "Validation Failed" {
					t.Errorf("message %q, want Validation Failed", got.Message)
				}
				found := false
				for _, e := range got.Errors {
					if e.Field == tt.wantField && (tt.wantCode == "" || e.Code == tt.wantCode) {
						found = true
					}
				}
				if !found {
					t.Errorf("no error on field %q (code %q) in %s", tt.wantField, tt.wantCode, body)
				}
			}
		})
	}
}
