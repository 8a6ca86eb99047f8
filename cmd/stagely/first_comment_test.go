package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/ghsim"
	"github.com/stagely-dev/stagely/reconciler/reconcilertest"
	"github.com/stagely-dev/stagely/store"
)

// TestConcurrentEventsForNewPullRequestMakeOneComment has every event of a
// brand-new pull request arrive at once, before Stagely has seen any of
// it: GitHub could not reach Stagely while the pull request was opened,
// pushed to, closed, reopened and pushed to again, then delivers the
// backlog, each delivery twice (its retry and a redelivery), 50 requests
// in all, spread over two servers sharing Postgres and Valkey. Workers of
// both servers race to post the first sticky comment; there must be
// exactly one, created once, showing the pull request's final head.
func TestConcurrentEventsForNewPullRequestMakeOneComment(t *testing.T) {
	w := newWorld(t, nil)
	w.valkey = valkeyURL()
	d := reconcilertest.New()
	var addrs []string
	for range 2 {
		w.serve(d, 4)
		addrs = append(addrs, w.addr)
	}

	// The pull request's life while GitHub cannot reach Stagely. The
	// simulator's clock moves a second before each change: GitHub's
	// updated_at has a resolution of a second, and it is what orders
	// deliveries that arrive out of order.
	w.sim.SetWebhookURL("")
	ctx := context.Background()
	tick := func() { w.sim.Advance(time.Second) }
	pr, err := w.sim.OpenPR(ctx, prSpec("first-comment"))
	if err != nil {
		t.Fatal(err)
	}
	head := pr.SHA
	push := func(i int) {
		tick()
		res, err := w.sim.PushToPR(ctx, ghsim.PushSpec{Owner: owner, Repo: repoName, Number: pr.Number, Files: map[string]string{"index.html": fmt.Sprint("push ", i)}})
		if err != nil {
			t.Fatal(err)
		}
		head = res.SHA
	}
	for i := range 11 {
		push(i)
	}
	tick()
	if _, err := w.sim.ClosePR(ctx, owner, repoName, pr.Number, false, "octocat"); err != nil {
		t.Fatal(err)
	}
	tick()
	if _, err := w.sim.ReopenPR(ctx, owner, repoName, pr.Number, "octocat"); err != nil {
		t.Fatal(err)
	}
	for i := 11; i < 22; i++ {
		push(i)
	}

	var backlog []ghsim.Delivery
	for _, dl := range w.sim.Deliveries() {
		if dl.Event == "pull_request" {
			if dl.Status != 0 {
				t.Fatalf("pull_request.%s was delivered (status %d) while GitHub could not reach Stagely", dl.Action, dl.Status)
			}
			backlog = append(backlog, dl)
		}
	}
	if len(backlog) != 25 {
		t.Fatalf("%d pull_request deliveries in the backlog, want 25 (opened, 22 synchronize, closed, reopened)", len(backlog))
	}
	if n, err := w.db.NewSelect().Model((*store.Environment)(nil)).Count(ctx); err != nil || n != 0 {
		t.Fatalf("%d environments (%v) before the backlog was delivered, want none", n, err)
	}
	if s := w.sticky(pr.Number); len(s) != 0 {
		t.Fatalf("%d sticky comments before the backlog was delivered, want none", len(s))
	}

	// The backlog, all at once: every goroutine waits at the gate.
	w.sim.SetWebhookURL(roundRobin(t, addrs) + "/api/github/hook")
	gate := make(chan struct{})
	var wg sync.WaitGroup
	statuses := make([]int, 2*len(backlog))
	errs := make([]error, len(statuses))
	for i := range statuses {
		dl := backlog[i%len(backlog)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			res, err := w.sim.Redeliver(ctx, dl.GUID)
			statuses[i], errs[i] = res.Status, err
		}()
	}
	close(gate)
	wg.Wait()
	for i, st := range statuses {
		if errs[i] != nil || st != http.StatusOK {
			dl := backlog[i%len(backlog)]
			t.Errorf("delivery of pull_request.%s %s: status %d, %v; want 200", dl.Action, dl.GUID, st, errs[i])
		}
	}

	eventually(t, 60*time.Second, func() (bool, string) {
		e := w.environment(pr.Number)
		return e.DesiredSHA == head && e.DesiredState == store.DesiredRunning &&
				e.ObservedSHA == head && e.ObservedState == store.ObservedRunning &&
				e.ObservedGeneration == e.DesiredGeneration && e.IntentSeq == e.HandledSeq,
			fmt.Sprintf("environment desired %s@%s, observed %s@%s (generation %d/%d, intent %d/%d); want running at the head %s",
				e.DesiredState, short7(e.DesiredSHA), e.ObservedState, short7(e.ObservedSHA),
				e.ObservedGeneration, e.DesiredGeneration, e.HandledSeq, e.IntentSeq, short7(head))
	})
	// The worker edits the comment just before it records the outcome.
	sticky := w.sticky(pr.Number)
	if len(sticky) != 1 {
		t.Fatalf("%d sticky comments after 50 concurrent deliveries for a new pull request, want exactly 1", len(sticky))
	}
	if body := sticky[0].Body; !strings.Contains(body, "Stagely preview: ready") || !strings.Contains(body, head[:7]) {
		t.Errorf("sticky comment does not say ready at the final head %s:\n%s", head[:7], body)
	}
	if e := w.environment(pr.Number); e.CommentID != sticky[0].ID {
		t.Errorf("environment records comment %d, want the sticky comment %d", e.CommentID, sticky[0].ID)
	}
	// Not merely one left at the end: one ever created.
	created := 0
	for _, r := range w.sim.Requests() {
		if r.Method == http.MethodPost && r.Path == fmt.Sprintf("/repos/%s/%s/issues/%d/comments", owner, repoName, pr.Number) {
			created++
		}
	}
	if created != 1 {
		t.Errorf("%d comments created on the pull request, want 1 (the sticky comment)", created)
	}
	w.checkConverged(t, []int{pr.Number})
	runs := w.runs(head)
	if len(runs) == 0 || runs[len(runs)-1].Conclusion != "success" {
		t.Errorf("check runs on the head %s: %s; want the last to succeed", head[:7], describeRuns(runs))
	}
}

// roundRobin starts a proxy that hands each request to the next of addrs,
// as a load balancer in front of several servers does, and returns its URL.
func roundRobin(t testing.TB, addrs []string) string {
	t.Helper()
	var next atomic.Uint64
	p := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(&url.URL{Scheme: "http", Host: addrs[(next.Add(1)-1)%uint64(len(addrs))]})
	}}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	return srv.URL
}

func short7(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}
