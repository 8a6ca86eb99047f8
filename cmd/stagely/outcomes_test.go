package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/reconciler"
	"github.com/stagely-dev/stagely/reconciler/reconcilertest"
	"github.com/stagely-dev/stagely/store"
)

func TestFailedDeployIsReportedWithReasonAndLog(t *testing.T) {
	w := newWorld(t, nil)
	d := reconcilertest.New()
	d.Block() // the SHA is known only once the PR exists: hold its deploy until told to fail it
	w.serve(d, 2)
	res, err := w.sim.OpenPR(context.Background(), prSpec("broken"))
	if err != nil {
		t.Fatal(err)
	}
	d.FailSHA(res.SHA, &reconciler.DeployError{
		Step: "Build", Reason: "service web: exit code 2", Hint: "fix the Dockerfile and push",
		LogTail: "step 1/3\nstep 2/3\nerror: go build failed\n",
	})
	d.Unblock()
	failed := w.completed(res.SHA, "failure", 5*time.Second)
	for _, want := range []string{"Build", "exit code 2", "fix the Dockerfile"} {
		if !strings.Contains(failed.Summary+failed.Text, want) {
			t.Errorf("failed check run lacks %q:\n%s\n%s", want, failed.Summary, failed.Text)
		}
	}
	if !strings.Contains(failed.Text, "go build failed") {
		t.Errorf("failed check run text lacks the log tail:\n%s", failed.Text)
	}
	eventually(t, 2*time.Second, func() (bool, string) {
		s := w.sticky(res.Number)
		return len(s) == 1 && strings.Contains(s[0].Body, "exit code 2"), "sticky comment does not carry the failure"
	})
	// The worker records the outcome just after it posts the comment.
	eventually(t, 2*time.Second, func() (bool, string) {
		e := w.environment(res.Number)
		return e.ObservedState == store.ObservedFailed, "observed state " + e.ObservedState + ", want failed"
	})
}

func TestPushSupersedesDeployInProgress(t *testing.T) {
	w := newWorld(t, nil)
	d := reconcilertest.New()
	d.Block()
	w.serve(d, 2)
	pr := w.openPR("feature")
	eventually(t, 5*time.Second, func() (bool, string) {
		rs := w.runs(pr.SHA)
		return len(rs) == 1 && rs[0].Status == "in_progress", "first deploy not in progress: " + describeRuns(rs)
	})
	push := w.push(pr.Number, "v2")
	old := w.completed(pr.SHA, "cancelled", 5*time.Second)
	if !strings.Contains(old.Summary+old.Text+old.Title, push.SHA[:7]) {
		t.Errorf("cancelled run does not name the newer commit %s:\n%s", push.SHA[:7], old.Summary)
	}
	d.Unblock()
	w.completed(push.SHA, "success", 5*time.Second)
}

func TestCommandsAreAudited(t *testing.T) {
	w := newWorld(t, nil)
	w.serve(reconcilertest.New(), 2)
	pr := w.openPR("feature")
	w.completed(pr.SHA, "success", 5*time.Second)
	w.comment(pr.Number, "alice", "write", "/stagely destroy")
	w.comment(pr.Number, "mallory", "read", "/stagely redeploy")
	eventually(t, 5*time.Second, func() (bool, string) {
		var got []string
		err := w.db.NewRaw("SELECT actor || ':' || action FROM audit_logs ORDER BY id").Scan(context.Background(), &got)
		joined := strings.Join(got, ",")
		return err == nil && strings.Contains(joined, "alice:command.destroy.applied") &&
			strings.Contains(joined, "mallory:command.redeploy.refused"), "audit log: " + joined
	})
}

// TestWithValkey runs the lifecycle with the shared Valkey store instead of
// the in-process one, as a scaled deployment does.
func TestWithValkey(t *testing.T) {
	w := newWorld(t, nil)
	w.valkey = valkeyURL()
	d := reconcilertest.New()
	w.serve(d, 2)
	pr := w.openPR("feature")
	w.completed(pr.SHA, "success", 5*time.Second)
	push := w.push(pr.Number, "v2")
	w.completed(push.SHA, "success", 5*time.Second)
}
