package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/app"
	"github.com/stagely-dev/stagely/ghsim"
	"github.com/stagely-dev/stagely/store"
)

// checkConverged asserts that every environment reached its desired state
// and that no step was done twice: one sticky comment per pull request,
// one check run per deployment, none left open.
func (w *world) checkConverged(t *testing.T, prs []int) {
	t.Helper()
	ctx := context.Background()
	for _, n := range prs {
		e := w.environment(n)
		if e.ObservedGeneration != e.DesiredGeneration || e.IntentSeq != e.HandledSeq {
			t.Errorf("#%d not converged: generation %d/%d, intent %d/%d", n, e.ObservedGeneration, e.DesiredGeneration, e.HandledSeq, e.IntentSeq)
		}
		want := store.ObservedRunning
		if e.DesiredState == store.DesiredDestroyed {
			want = store.ObservedDestroyed
		}
		if e.ObservedState != want {
			t.Errorf("#%d observed %s, want %s", n, e.ObservedState, want)
		}
		var deps []store.Deployment
		if err := w.db.NewSelect().Model(&deps).Where("environment_id = ? AND check_run_id <> 0", e.ID).Scan(ctx); err != nil {
			t.Fatal(err)
		}
		// A pull request closed before any deploy began has nothing to
		// report; every other has exactly one comment.
		if s := w.sticky(n); len(s) > 1 || len(s) == 0 && len(deps) > 0 {
			t.Errorf("#%d has %d sticky comments and %d deployments", n, len(s), len(deps))
		}
		runs := map[int64]bool{}
		for _, d := range deps {
			if runs[d.CheckRunID] {
				t.Errorf("#%d: check run %d shared by two deployments", n, d.CheckRunID)
			}
			runs[d.CheckRunID] = true
			for _, r := range w.runs(d.SHA) {
				if r.Status != "completed" {
					t.Errorf("#%d: check run %d on %s left %s", n, r.ID, d.SHA[:7], r.Status)
				}
				if !runs[r.ID] && r.ExternalID == app.ExternalID(n, d.Generation) {
					t.Errorf("#%d: a second check run for generation %d", n, d.Generation)
				}
			}
		}
	}
}

// TestTwoServersShareTheWork runs two server processes on one Postgres
// and one Valkey; webhooks reach either. Every deployment happens exactly
// once (each process logs its deploys to one shared file) and nothing is
// reported twice.
func TestTwoServersShareTheWork(t *testing.T) {
	w := newWorld(t, nil)
	deploys := filepath.Join(t.TempDir(), "deploys")
	env := []string{"STAGELY_VALKEY_URL=" + valkeyURL(), "STAGELY_E2E_DELAY=50ms", "STAGELY_E2E_DEPLOY_LOG=" + deploys}
	w.childWith(4, false, env...)
	addrA := w.addr
	w.childWith(4, false, env...)
	addrB := w.addr
	ctx := context.Background()

	var prs []int
	for i := range 8 {
		w.sim.SetWebhookURL("http://" + []string{addrA, addrB}[i%2] + "/api/github/hook")
		pr, err := w.sim.OpenPR(ctx, ghsim.PRSpec{Owner: owner, Repo: repoName, Head: fmt.Sprintf("f%d", i), Files: map[string]string{"i": fmt.Sprint(i)}})
		if err != nil {
			t.Fatal(err)
		}
		prs = append(prs, pr.Number)
	}
	for i, n := range prs {
		w.sim.SetWebhookURL("http://" + []string{addrB, addrA}[i%2] + "/api/github/hook")
		if _, err := w.sim.PushToPR(ctx, ghsim.PushSpec{Owner: owner, Repo: repoName, Number: n, Files: map[string]string{"i": "pushed"}}); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			if _, err := w.sim.ClosePR(ctx, owner, repoName, n, false, "octocat"); err != nil {
				t.Fatal(err)
			}
		}
	}
	eventually(t, 30*time.Second, func() (bool, string) {
		for _, n := range prs {
			e := w.environment(n)
			if e.IntentSeq != e.HandledSeq || e.ObservedGeneration != e.DesiredGeneration {
				return false, fmt.Sprintf("#%d not converged", n)
			}
		}
		return true, ""
	})
	w.checkConverged(t, prs)
	b, err := os.ReadFile(deploys)
	if err != nil {
		t.Fatal(err)
	}
	count, pids := map[string]int{}, map[string]bool{}
	for _, line := range strings.Fields(string(b)) {
		gen, pid, _ := strings.Cut(line, "/")
		count[gen]++
		pids[pid] = true
	}
	if len(count) < len(prs)*2-3 {
		t.Errorf("only %d generations deployed for %d pull requests opened and pushed", len(count), len(prs))
	}
	for k, n := range count {
		if n != 1 {
			t.Errorf("generation %s deployed %d times", k, n)
		}
	}
	if len(pids) != 2 {
		t.Errorf("deploys done by %d processes, want both", len(pids))
	}
}

// TestCrashesLoseNothing runs 20 pull request lifecycles against server
// processes that are killed with SIGKILL at random moments and restarted:
// at the end every environment has converged, with one comment per pull
// request and one check run per deployment.
func TestCrashesLoseNothing(t *testing.T) {
	w := newWorld(t, nil)
	ctx := context.Background()
	child := w.childAt(4, "300ms")
	restarts := 0
	var prs []int
	for i := range 20 {
		pr, err := w.sim.OpenPR(ctx, ghsim.PRSpec{Owner: owner, Repo: repoName, Head: fmt.Sprintf("c%d", i), Files: map[string]string{"i": fmt.Sprint(i)}})
		if err != nil {
			t.Fatal(err)
		}
		prs = append(prs, pr.Number)
		if rand.IntN(3) == 0 {
			time.Sleep(time.Duration(rand.IntN(400)) * time.Millisecond)
			kill(t, child)
			child = w.childAt(4, "300ms")
			restarts++
		}
		// Deliveries GitHub could not hand over while the server was down
		// are redelivered, as GitHub's retry of failed deliveries does.
		w.redeliverFailed(ctx)
		if _, err := w.sim.PushToPR(ctx, ghsim.PushSpec{Owner: owner, Repo: repoName, Number: pr.Number, Files: map[string]string{"i": "pushed"}}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if _, err := w.sim.ClosePR(ctx, owner, repoName, pr.Number, false, "octocat"); err != nil {
				t.Fatal(err)
			}
		}
	}
	w.redeliverFailed(ctx)
	t.Logf("%d restarts", restarts)
	eventually(t, 60*time.Second, func() (bool, string) {
		w.redeliverFailed(ctx)
		for _, n := range prs {
			e := w.environment(n)
			if e.IntentSeq != e.HandledSeq || e.ObservedGeneration != e.DesiredGeneration {
				return false, fmt.Sprintf("#%d not converged (%s)", n, e.ObservedState)
			}
		}
		return true, ""
	})
	w.checkConverged(t, prs)
}
