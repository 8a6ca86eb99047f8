package fleet_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/fleet"
	"github.com/stagely-dev/stagely/proxy"
	"github.com/stagely-dev/stagely/store"
	"github.com/stagely-dev/stagely/store/storetest"
)

// environmentFor records pull request pr wanting to run, and returns its
// environment's id and hash.
func environmentFor(t *testing.T, db *bun.DB, pr int) (int64, string) {
	t.Helper()
	in := store.PullRequestIntent{Repo: store.RepoRef{InstallationID: 1, RepositoryID: 2, Owner: "o", Name: "r"},
		PRNumber: pr, HeadSHA: "deadbeef", Desired: store.DesiredRunning, UpdatedAt: time.Now()}
	id, _, err := store.DeliverPullRequest(context.Background(), db, store.Delivery{ID: fmt.Sprintf("d%d", pr), Event: "pull_request"}, in)
	if err != nil || id == 0 {
		t.Fatalf("environment: %d, %v", id, err)
	}
	var hash string
	if err := db.NewRaw("SELECT hash FROM environments WHERE id = ?", id).Scan(context.Background(), &hash); err != nil {
		t.Fatal(err)
	}
	return id, hash
}

// machineFor records a machine of env; enrolled ones hold an agent token.
func machineFor(t *testing.T, db *bun.DB, env int64, enrolled, destroyed bool) int64 {
	t.Helper()
	var id int64
	err := db.NewRaw(`
INSERT INTO agents (environment_id, attempt, key, provider, bootstrap_hash, token_hash, state, destroyed_at)
VALUES (?, 1, 'key-' || ?::text, 'test', 'boot-' || ?::text,
        CASE WHEN ? THEN 'token-' || ?::text END, 'running', CASE WHEN ? THEN now() END)
RETURNING id`, env, env, env, enrolled, env, destroyed).Scan(context.Background(), &id)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestPrimedRoutesMakeKnownPreviewsAnswerUnreachableNotUnknown(t *testing.T) {
	db := storetest.New(t)
	ctx := context.Background()
	primary := func(hash string) string { return hash + ".preview.test" }

	running, runningHash := environmentFor(t, db, 1)
	agent := machineFor(t, db, running, true, false)
	if _, err := db.ExecContext(ctx, `INSERT INTO deployments (environment_id, generation, sha, agent_spec) VALUES (?, 1, 'deadbeef', ?)`,
		running, `{"previews":[{"name":"web","service":"web","port":80},{"name":"api","service":"api","port":8080,"host":"`+runningHash+`-api.preview.test"}]}`); err != nil {
		t.Fatal(err)
	}
	booting, bootingHash := environmentFor(t, db, 2)
	machineFor(t, db, booting, false, false) // not enrolled yet: never served anything
	closing, closingHash := environmentFor(t, db, 3)
	machineFor(t, db, closing, true, false)
	if _, err := db.ExecContext(ctx, `UPDATE environments SET desired_state = 'destroyed' WHERE id = ?`, closing); err != nil {
		t.Fatal(err)
	}
	gone, goneHash := environmentFor(t, db, 4)
	machineFor(t, db, gone, true, true)

	routes := proxy.NewMemory()
	n, err := (&fleet.TunnelAuth{DB: db, PrimaryHost: primary}).PrimeRoutes(ctx, routes, 0)
	if err != nil || n != 2 {
		t.Fatalf("primed %d hosts (%v), want 2", n, err)
	}
	for _, host := range []string{primary(runningHash), runningHash + "-api.preview.test"} {
		r, err := routes.Resolve(ctx, host)
		if err != nil {
			t.Errorf("%s: %v", host, err)
			continue
		}
		if r.Environment != strconv.FormatInt(running, 10) || r.Agent != strconv.FormatInt(agent, 10) || r.Node != "" {
			t.Errorf("%s routes to %+v; want environment %d, agent %d, connected nowhere", host, r, running, agent)
		}
	}
	for _, hash := range []string{bootingHash, closingHash, goneHash} {
		if r, err := routes.Resolve(ctx, primary(hash)); !errors.Is(err, proxy.ErrNoRoute) {
			t.Errorf("%s primed: %+v, %v", primary(hash), r, err)
		}
	}
}

// An environment being destroyed has no preview to serve: its routes are
// deleted before its machine goes, and an agent that reconnects in
// between must not publish them again. It keeps its control calls, with
// which it takes down its containers.
func TestAgentOfAClosingEnvironmentIsGrantedNoHostnames(t *testing.T) {
	db := storetest.New(t)
	ctx := context.Background()
	env, hash := environmentFor(t, db, 1)
	agent := machineFor(t, db, env, true, false)
	if _, err := db.ExecContext(ctx, `UPDATE agents SET token_hash = encode(sha256('agent-token'), 'hex') WHERE id = ?`, agent); err != nil {
		t.Fatal(err)
	}
	auth := &fleet.TunnelAuth{DB: db, PrimaryHost: func(hash string) string { return hash + ".preview.test" }}

	id, err := auth.Authenticate(ctx, "agent-token")
	if err != nil || len(id.Hostnames) != 1 || id.Hostnames[0] != hash+".preview.test" {
		t.Fatalf("running: %+v, %v; want the primary host", id, err)
	}
	if _, err := db.ExecContext(ctx, `UPDATE environments SET desired_state = 'destroyed' WHERE id = ?`, env); err != nil {
		t.Fatal(err)
	}
	id, err = auth.Authenticate(ctx, "agent-token")
	if err != nil || id.Agent != strconv.FormatInt(agent, 10) || len(id.Hostnames) != 0 {
		t.Fatalf("closing: %+v, %v; want the agent admitted with no hostnames", id, err)
	}
}
