package ghsim

import (
	"testing"
)

// GitHub shows a check run's buttons only once the run has completed (the
// API description of "actions": "The button created in this object is
// displayed after the check run completes"), so nobody can press one on a
// queued or in-progress run, and no requested_action is sent for one.
func TestCheckRunActionsCanBePressedOnlyOnceTheRunCompleted(t *testing.T) {
	f := newFixture(t)
	pr := f.openPR(PRSpec{Head: "feature", Files: map[string]string{"a.txt": "a\n"}})
	actions := []map[string]string{{"label": "Destroy", "description": "Tear it down", "identifier": "destroy"}}
	for _, status := range []string{"queued", "in_progress"} {
		t.Run(status, func(t *testing.T) {
			resp, body := f.do("POST", "/repos/acme/widgets/check-runs", f.token(), map[string]any{
				"name": "stagely", "head_sha": pr.SHA, "status": status, "actions": actions,
				"output": map[string]string{"title": "Deploying", "summary": "building"},
			})
			wantStatus(t, resp, body, 201)
			id := decode[struct{ ID int64 }](t, body).ID
			before := len(f.sim.Deliveries())
			if _, err := f.sim.ClickCheckRunAction(f.ctx, "acme", "widgets", id, "destroy", "alice"); err == nil {
				t.Errorf("pressed a button of a %s check run, which GitHub does not show", status)
			}
			if n := len(f.sim.Deliveries()) - before; n != 0 {
				t.Errorf("%d webhooks sent for the press", n)
			}

			resp, body = f.do("PATCH", "/repos/acme/widgets/check-runs/"+itoa(id), f.token(), map[string]any{"conclusion": "success"})
			wantStatus(t, resp, body, 200)
			if _, err := f.sim.ClickCheckRunAction(f.ctx, "acme", "widgets", id, "destroy", "alice"); err != nil {
				t.Errorf("the completed run's button: %v", err)
			}
		})
	}
}
