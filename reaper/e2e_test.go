package reaper_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/app"
	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/comments"
	"github.com/stagely-dev/stagely/ghclient"
	"github.com/stagely-dev/stagely/ghsim"
	"github.com/stagely-dev/stagely/kv"
	"github.com/stagely-dev/stagely/reaper"
	"github.com/stagely-dev/stagely/reconciler"
	"github.com/stagely-dev/stagely/reconciler/reconcilertest"
	"github.com/stagely-dev/stagely/repoconfig"
	"github.com/stagely-dev/stagely/store"
	"github.com/stagely-dev/stagely/store/storetest"
)

const (
	appID     = 4242
	hookToken = "reaper-webhook-secret-0123456789"
	// stagelyYML sets a TTL, which must win over the server's default.
	stagelyYML = "version: 1\nttl: 2h\npreviews:\n  - name: web\n    service: web\n    port: 8080\n"
)

// world is a simulated GitHub with one repository, webhook intake and
// reconciler workers on a fresh database, deploying through a fake
// Deployer, and a reaper sharing the database and wake-ups.
type world struct {
	t        *testing.T
	sim      *ghsim.Sim
	db       *bun.DB
	deployer *reconcilertest.Deployer
	reaper   *reaper.Reaper
}

func newWorld(t *testing.T, rc reaper.Config) *world {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	sim, err := ghsim.New(ghsim.Config{AppID: appID, AppSlug: "stagely", WebhookSecret: hookToken, CheckResponses: true})
	if err != nil {
		t.Fatal(err)
	}
	gh := httptest.NewServer(sim)
	t.Cleanup(gh.Close)
	sim.SetBaseURL(gh.URL)
	if _, err := sim.CreateInstallation(ctx, ghsim.InstallationSpec{Account: "acme"}); err != nil {
		t.Fatal(err)
	}
	if _, err := sim.CreateRepo(ctx, ghsim.RepoSpec{Owner: "acme", Name: "shop",
		Files: map[string]string{".stagely.yml": stagelyYML, "compose.yaml": "services: {web: {build: .}}\n"}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, r := range sim.Requests() {
			if !r.Valid || r.ResponseError != "" {
				t.Errorf("request GitHub would refuse: %s %s → %d: %s %s", r.Method, r.Path, r.Status, r.Error, r.ResponseError)
			}
		}
	})

	db := storetest.New(t)
	wake := kv.NewMemory()
	intake := httptest.NewServer(app.NewIntake(&app.Base{DB: db, Wake: wake, AppID: appID, Logger: log}, hookToken))
	t.Cleanup(intake.Close)
	sim.SetWebhookURL(intake.URL + app.HookPath)
	clients, err := ghclient.New(ghclient.Config{BaseURL: gh.URL + "/", AppID: appID, PrivateKeyPEM: sim.AppPrivateKeyPEM(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	d := reconcilertest.New()
	t.Cleanup(d.Unblock)
	rec, err := reconciler.New(reconciler.Config{
		DB: db, Wake: wake, Clients: clients, BotLogin: sim.BotLogin(), Deployer: d,
		Defaults: repoconfig.Defaults{Provider: repoconfig.Provider{Name: "local"}, TTL: time.Hour},
		Workers:  2, Lease: time.Second, Poll: 100 * time.Millisecond, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rec.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("reconciler: %v", err)
		}
	})
	rc.DB, rc.Wake, rc.Logger = db, wake, zerolog.New(zerolog.NewTestWriter(t))
	r, err := reaper.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	return &world{t: t, sim: sim, db: db, deployer: d, reaper: r}
}

func (w *world) openPR() (pr int, sha string) {
	w.t.Helper()
	res, err := w.sim.OpenPR(context.Background(), ghsim.PRSpec{Owner: "acme", Repo: "shop", Head: "feature", Files: map[string]string{"index.html": "v1"}})
	if err != nil || res.Delivery == nil || res.Delivery.Status != 200 {
		w.t.Fatalf("open PR: %+v, %v", res.Delivery, err)
	}
	return res.Number, res.SHA
}

func (w *world) comment(pr int, body string) {
	w.t.Helper()
	w.commentAs(pr, "alice", "write", body)
}

func (w *world) commentAs(pr int, user, permission, body string) {
	w.t.Helper()
	res, err := w.sim.Comment(context.Background(), ghsim.CommentSpec{Owner: "acme", Repo: "shop", Number: pr, User: user, Permission: permission, Body: body})
	if err != nil || res.Delivery == nil || res.Delivery.Status != 200 {
		w.t.Fatalf("comment %q: %+v, %v", body, res.Delivery, err)
	}
}

// sticky is the body of Stagely's one sticky comment on pr.
func (w *world) sticky(pr int) string {
	w.t.Helper()
	cs, err := w.sim.Comments("acme", "shop", pr)
	if err != nil {
		w.t.Fatal(err)
	}
	var bodies []string
	for _, c := range cs {
		if c.User == w.sim.BotLogin() && strings.Contains(c.Body, comments.Marker) {
			bodies = append(bodies, c.Body)
		}
	}
	if len(bodies) > 1 {
		w.t.Fatalf("%d sticky comments", len(bodies))
	}
	return strings.Join(bodies, "")
}

// runs are Stagely's check runs on sha, oldest first.
func (w *world) runs(sha string) []ghsim.CheckRun {
	w.t.Helper()
	all, err := w.sim.CheckRuns("acme", "shop", sha)
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

func (w *world) env(pr int) store.Environment {
	w.t.Helper()
	var e store.Environment
	if err := w.db.NewSelect().Model(&e).Where("pr_number = ?", pr).Scan(context.Background()); err != nil {
		w.t.Fatal(err)
	}
	return e
}

func (w *world) waitFor(what string, cond func() bool) {
	w.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			w.t.Fatalf("not within 20s: %s", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func (w *world) started() {
	w.t.Helper()
	select {
	case <-w.deployer.Started():
	case <-time.After(20 * time.Second):
		w.t.Fatal("no deploy started within 20s")
	}
}

func TestIdlePreviewIsDestroyedAndCommentingRedeployBringsItBack(t *testing.T) {
	w := newWorld(t, reaper.Config{})
	ctx := context.Background()
	pr, sha := w.openPR()
	w.waitFor("the preview is ready", func() bool { return w.env(pr).ObservedState == store.ObservedRunning })
	e := w.env(pr)
	if e.TTLSeconds != int64(2*time.Hour/time.Second) {
		t.Fatalf("recorded TTL %ds, want .stagely.yml's 2h", e.TTLSeconds)
	}
	if rep, err := w.reaper.Sweep(ctx); err != nil || len(rep.Idle) != 0 {
		t.Fatalf("reaped a fresh preview: %v, %v", ids(rep.Idle), err)
	}

	// Nobody pushes or comments for longer than the TTL, and the preview
	// has been ready for as long.
	exec(t, w.db, `UPDATE environments SET touched_at = now() - interval '2 hours 1 minute' WHERE id = ?`, e.ID)
	exec(t, w.db, `UPDATE deployments SET finished_at = now() - interval '2 hours 1 minute' WHERE environment_id = ?`, e.ID)
	rep, err := w.reaper.Sweep(ctx)
	if err != nil || len(rep.Idle) != 1 || rep.Idle[0].EnvironmentID != e.ID {
		t.Fatalf("sweep reaped %v, %v; want [%d]", ids(rep.Idle), err, e.ID)
	}
	w.waitFor("the environment is destroyed", func() bool { return w.env(pr).ObservedState == store.ObservedDestroyed })
	if n := len(w.deployer.Destroys()); n != 1 {
		t.Errorf("%d destroys, want 1", n)
	}
	body := w.sticky(pr)
	for _, want := range []string{"destroyed", "inactivity", "2 hours", "`/stagely redeploy`"} {
		if !strings.Contains(body, want) {
			t.Errorf("sticky comment lacks %q:\n%s", want, body)
		}
	}
	runs := w.runs(sha)
	if len(runs) != 1 || runs[0].Conclusion != "neutral" || !strings.Contains(runs[0].Summary+runs[0].Text+runs[0].Title, "inactivity") {
		t.Errorf("check runs after the reaping: %+v", runs)
	}

	// The comment's advice works.
	w.comment(pr, "/stagely redeploy")
	w.waitFor("the preview is back", func() bool {
		e := w.env(pr)
		return e.DesiredState == store.DesiredRunning && e.ObservedState == store.ObservedRunning
	})
	if body := w.sticky(pr); strings.Contains(body, "inactivity") || !strings.Contains(body, "ready") {
		t.Errorf("sticky comment after the redeploy:\n%s", body)
	}
	if rep, err := w.reaper.Sweep(ctx); err != nil || len(rep.Idle) != 0 {
		t.Errorf("reaped right after the redeploy: %v, %v", ids(rep.Idle), err)
	}
}

// TestOnlyAWritersCommandKeepsAPreviewAlive: on a public repository anyone
// may comment; a command the worker refuses, and help, must not reset the
// TTL, or a stranger could keep a preview's machine running, billed, for
// ever.
func TestOnlyAWritersCommandKeepsAPreviewAlive(t *testing.T) {
	w := newWorld(t, reaper.Config{})
	ctx := context.Background()
	pr, _ := w.openPR()
	w.waitFor("the preview is ready", func() bool { return w.env(pr).ObservedState == store.ObservedRunning })
	e := w.env(pr)
	exec(t, w.db, `UPDATE environments SET touched_at = now() - interval '2 hours 1 minute' WHERE id = ?`, e.ID)
	exec(t, w.db, `UPDATE deployments SET finished_at = now() - interval '2 hours 1 minute' WHERE environment_id = ?`, e.ID)

	w.commentAs(pr, "mallory", "read", "/stagely redeploy")
	w.commentAs(pr, "mallory", "read", "/stagely help")
	w.waitFor("both comments are handled", func() bool {
		var pending int
		err := w.db.NewRaw(`SELECT count(*) FROM commands WHERE environment_id = ? AND status = ?`, e.ID, store.CommandPending).Scan(ctx, &pending)
		e := w.env(pr)
		return err == nil && pending == 0 && e.IntentSeq == e.HandledSeq
	})
	rep, err := w.reaper.Sweep(ctx)
	if err != nil || len(rep.Idle) != 1 || rep.Idle[0].EnvironmentID != e.ID {
		t.Fatalf("sweep after a reader's comments reaped %v, %v; want [%d]", ids(rep.Idle), err, e.ID)
	}
}

func TestStuckDeployIsRetriedThenReportedFailed(t *testing.T) {
	// The reconcilers renew their 1 s lease every third of a second.
	w := newWorld(t, reaper.Config{StuckAfter: time.Hour, Takeover: 1500 * time.Millisecond})
	ctx := context.Background()
	w.deployer.Block()
	pr, sha := w.openPR()
	w.started()
	id := w.env(pr).ID
	// silence makes the deploy look as if it had reported nothing for
	// longer than the deadline.
	silence := func() {
		exec(t, w.db, `UPDATE environments SET updated_at = now() - interval '2 hours' WHERE id = ?`, id)
		exec(t, w.db, `UPDATE deployments SET updated_at = now() - interval '2 hours' WHERE environment_id = ?`, id)
	}

	silence()
	rep, err := w.reaper.Sweep(ctx)
	if err != nil || len(rep.Retried) != 1 || len(rep.Failed) != 0 {
		t.Fatalf("first sweep: retried %v, failed %v, %v", ids(rep.Retried), ids(rep.Failed), err)
	}
	w.started() // the retry: another claim deploys again, and hangs again
	w.waitFor("the retry holds the environment", func() bool { return w.env(pr).LeaseOwner != "" })

	silence()
	rep, err = w.reaper.Sweep(ctx)
	if err != nil || len(rep.Failed) != 1 || len(rep.Retried) != 0 {
		t.Fatalf("second sweep: retried %v, failed %v, %v", ids(rep.Retried), ids(rep.Failed), err)
	}
	w.waitFor("the deploy is reported failed", func() bool { return w.env(pr).ObservedState == store.ObservedFailed })
	runs := w.runs(sha)
	if len(runs) != 1 || runs[0].Status != "completed" || runs[0].Conclusion != "failure" ||
		!strings.Contains(runs[0].Summary+runs[0].Text, "no progress past the deadline") {
		t.Errorf("check runs: %+v", runs)
	}
	if body := w.sticky(pr); !strings.Contains(body, "deploy failed") || !strings.Contains(body, "no progress past the deadline") {
		t.Errorf("sticky comment:\n%s", body)
	}
	select {
	case s := <-w.deployer.Started():
		t.Errorf("deployed %s again after giving up", s)
	default:
	}
}
