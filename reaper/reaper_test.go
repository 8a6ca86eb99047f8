package reaper_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/provisioner"
	"github.com/stagely-dev/stagely/reaper"
	"github.com/stagely-dev/stagely/store"
	"github.com/stagely-dev/stagely/store/storetest"
)

// env records pull request pr of acme/shop the way the webhook does, then
// marks it deployed (observed running at its desired generation, nothing
// pending) with a TTL of ttl and its last push idle ago.
func env(t *testing.T, db *bun.DB, pr int, ttl, idle time.Duration) int64 {
	t.Helper()
	id := push(t, db, pr, fmt.Sprintf("sha-%d-1", pr))
	exec(t, db, `
UPDATE environments SET observed_state = 'running', observed_sha = desired_sha, observed_generation = desired_generation,
       handled_seq = intent_seq, ttl_seconds = ?, touched_at = now() - make_interval(secs => ?)
 WHERE id = ?`, int64(ttl/time.Second), idle.Seconds(), id)
	return id
}

// push records a pull_request webhook asking for sha, through the same
// statement the intake uses.
func push(t *testing.T, db *bun.DB, pr int, sha string) int64 {
	t.Helper()
	id, dup, err := store.DeliverPullRequest(context.Background(), db,
		store.Delivery{ID: fmt.Sprintf("delivery-%d-%s-%d", pr, sha, time.Now().UnixNano()), Event: "pull_request", Action: "synchronize", InstallationID: 7},
		store.PullRequestIntent{
			Repo:     store.RepoRef{InstallationID: 7, RepositoryID: 70, Owner: "acme", Name: "shop"},
			PRNumber: pr, HeadRepo: "acme/shop", HeadSHA: sha, Desired: store.DesiredRunning, UpdatedAt: time.Now(),
		})
	if err != nil || dup {
		t.Fatalf("record push of %s to #%d: %v (duplicate %v)", sha, pr, err, dup)
	}
	if id == 0 {
		t.Fatalf("push of %s to #%d changed nothing", sha, pr)
	}
	return id
}

func exec(t *testing.T, db bun.IDB, q string, args ...any) {
	t.Helper()
	if _, err := db.NewRaw(q, args...).Exec(context.Background()); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func load(t *testing.T, db *bun.DB, id int64) store.Environment {
	t.Helper()
	var e store.Environment
	if err := db.NewSelect().Model(&e).Where("id = ?", id).Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	return e
}

func audits(t *testing.T, db *bun.DB, action string, envID int64) int {
	t.Helper()
	n, err := db.NewSelect().Model((*store.AuditLog)(nil)).
		Where("action = ? AND actor = ? AND (environment_id = ? OR ? = 0)", action, reaper.Actor, envID, envID).Count(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}

func newReaper(t *testing.T, cfg reaper.Config) *reaper.Reaper {
	t.Helper()
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(t))
	r, err := reaper.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func ids(rs []reaper.Reaped) []int64 {
	var out []int64
	for _, r := range rs {
		out = append(out, r.EnvironmentID)
	}
	return out
}

func TestIdleEnvironmentIsDestroyedThroughTheIntentPath(t *testing.T) {
	db := storetest.New(t)
	ctx := context.Background()
	id := env(t, db, 1, time.Hour, 2*time.Hour)
	before := load(t, db, id)

	rep, err := newReaper(t, reaper.Config{DB: db}).Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(rep.Idle); len(got) != 1 || got[0] != id {
		t.Fatalf("reaped %v, want [%d]", got, id)
	}
	if r := rep.Idle[0]; r.Repo != "acme/shop" || r.PR != 1 || r.Generation != before.DesiredGeneration+1 {
		t.Errorf("report %+v", r)
	}
	e := load(t, db, id)
	if e.DesiredState != store.DesiredDestroyed || e.DesiredGeneration != before.DesiredGeneration+1 ||
		e.IntentSeq <= e.HandledSeq || e.NextAttemptAt.After(time.Now()) || e.DesiredSHA != before.DesiredSHA {
		t.Errorf("after the sweep: desired %s@%d %q, intent %d handled %d, due %s", e.DesiredState, e.DesiredGeneration,
			e.DesiredSHA, e.IntentSeq, e.HandledSeq, e.NextAttemptAt)
	}
	if e.ReapedGeneration != e.DesiredGeneration || e.ReapedReason != store.ReapedIdle {
		t.Errorf("reaped %q at generation %d, want %q at %d", e.ReapedReason, e.ReapedGeneration, store.ReapedIdle, e.DesiredGeneration)
	}
	if !e.TouchedAt.Equal(before.TouchedAt) {
		t.Errorf("touched_at moved from %s to %s: the reaper is not activity", before.TouchedAt, e.TouchedAt)
	}
	if n := audits(t, db, reaper.ActionIdle, id); n != 1 {
		t.Errorf("%d audit entries, want 1", n)
	}
	// The reconciler's claim finds it.
	claimed, err := store.Claim(ctx, db, "worker", time.Minute, 10)
	if err != nil || len(claimed) != 1 || claimed[0].ID != id {
		t.Fatalf("claim after the sweep = %v, %v", claimed, err)
	}

	rep, err = newReaper(t, reaper.Config{DB: db}).Sweep(ctx)
	if err != nil || len(rep.Idle) != 0 {
		t.Errorf("second sweep reaped %v, %v", ids(rep.Idle), err)
	}
}

func TestIdleSweepLeavesAlone(t *testing.T) {
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T, db *bun.DB) int64
	}{
		{"an environment within its TTL", func(t *testing.T, db *bun.DB) int64 {
			return env(t, db, 1, 2*time.Hour, time.Hour)
		}},
		{"an environment whose TTL was extended by a newer push", func(t *testing.T, db *bun.DB) int64 {
			id := env(t, db, 1, time.Hour, 2*time.Hour)
			push(t, db, 1, "sha-1-2")
			return id
		}},
		{"an environment with no known TTL", func(t *testing.T, db *bun.DB) int64 {
			return env(t, db, 1, 0, 1000*time.Hour)
		}},
		{"an environment already being destroyed", func(t *testing.T, db *bun.DB) int64 {
			id := env(t, db, 1, time.Hour, 2*time.Hour)
			exec(t, db, `UPDATE environments SET desired_state = 'destroyed' WHERE id = ?`, id)
			return id
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			db := storetest.New(t)
			id := tt.setup(t, db)
			before := load(t, db, id)
			rep, err := newReaper(t, reaper.Config{DB: db}).Sweep(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Idle) != 0 {
				t.Fatalf("reaped %v", ids(rep.Idle))
			}
			if e := load(t, db, id); e.DesiredGeneration != before.DesiredGeneration || e.DesiredState != before.DesiredState {
				t.Errorf("desired %s@%d, was %s@%d", e.DesiredState, e.DesiredGeneration, before.DesiredState, before.DesiredGeneration)
			}
			if n := audits(t, db, reaper.ActionIdle, 0); n != 0 {
				t.Errorf("%d audit entries", n)
			}
		})
	}
}

// A push that holds the environment's row while the reaper sweeps wins:
// the sweep skips the row instead of waiting, and the next sweep sees the
// push's touched_at.
func TestIdleSweepNeverWaitsOnNorOverridesAPushInFlight(t *testing.T) {
	db := storetest.New(t)
	ctx := context.Background()
	id := env(t, db, 1, time.Hour, 2*time.Hour)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	exec(t, tx, `UPDATE environments SET touched_at = now(), desired_sha = 'sha-1-2', desired_generation = desired_generation + 1 WHERE id = ?`, id)

	r := newReaper(t, reaper.Config{DB: db})
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rep, err := r.Sweep(sctx)
	if err != nil {
		t.Fatalf("sweep while a push holds the row: %v", err)
	}
	if len(rep.Idle) != 0 {
		t.Fatalf("reaped %v while a push held the row", ids(rep.Idle))
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if rep, err = r.Sweep(ctx); err != nil || len(rep.Idle) != 0 {
		t.Fatalf("after the push: reaped %v, %v", ids(rep.Idle), err)
	}
	if e := load(t, db, id); e.DesiredState != store.DesiredRunning {
		t.Errorf("desired %s", e.DesiredState)
	}
}

func TestTwoReapersAtOnceReapEachIdleEnvironmentOnce(t *testing.T) {
	db := storetest.New(t)
	ctx := context.Background()
	const envs, reapers = 40, 4
	gen := map[int64]int64{}
	for pr := 1; pr <= envs; pr++ {
		id := env(t, db, pr, time.Hour, 2*time.Hour)
		gen[id] = load(t, db, id).DesiredGeneration
	}
	var (
		mu     sync.Mutex
		reaped = map[int64]int{}
		wg     sync.WaitGroup
		start  = make(chan struct{})
	)
	for range reapers {
		r := newReaper(t, reaper.Config{DB: db, Batch: 7})
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for range envs {
				rep, err := r.Sweep(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for _, e := range rep.Idle {
					reaped[e.EnvironmentID]++
				}
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(reaped) != envs {
		t.Errorf("%d environments reaped, want %d", len(reaped), envs)
	}
	for id, n := range reaped {
		if n != 1 {
			t.Errorf("environment %d reaped %d times", id, n)
		}
		if e := load(t, db, id); e.DesiredGeneration != gen[id]+1 {
			t.Errorf("environment %d at generation %d, want %d", id, e.DesiredGeneration, gen[id]+1)
		}
	}
	if n := audits(t, db, reaper.ActionIdle, 0); n != envs {
		t.Errorf("%d audit entries, want %d", n, envs)
	}
}

// stuck makes environment id unconverged at a new generation, with no
// write to it or its deployments for ago, held by lease owner (empty: not
// held) and with intent pending or not.
func stuck(t *testing.T, db *bun.DB, id int64, ago time.Duration, owner string, pending bool) {
	t.Helper()
	handled := "intent_seq"
	if pending {
		handled = "intent_seq - 1"
	}
	exec(t, db, `
UPDATE environments SET desired_generation = observed_generation + 1, lease_owner = ?,
       lease_expires_at = CASE WHEN ? = '' THEN NULL ELSE now() + interval '1 minute' END,
       handled_seq = `+handled+`, updated_at = now() - make_interval(secs => ?)
 WHERE id = ?`, owner, owner, ago.Seconds(), id)
	exec(t, db, `
INSERT INTO deployments (environment_id, generation, sha, status, created_at, updated_at)
SELECT id, desired_generation, desired_sha, 'in_progress', now() - make_interval(secs => ?), now() - make_interval(secs => ?)
  FROM environments WHERE id = ?
ON CONFLICT (environment_id, generation) DO UPDATE SET updated_at = excluded.updated_at`, ago.Seconds(), ago.Seconds(), id)
}

func TestStuckEnvironmentIsRetriedThenFailed(t *testing.T) {
	db := storetest.New(t)
	ctx := context.Background()
	r := newReaper(t, reaper.Config{DB: db, StuckAfter: time.Hour})
	id := env(t, db, 1, 72*time.Hour, 0)
	stuck(t, db, id, 2*time.Hour, "wedged-worker", false)
	before := load(t, db, id)

	rep, err := r.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(rep.Retried); len(got) != 1 || got[0] != id || len(rep.Failed) != 0 {
		t.Fatalf("retried %v, failed %v; want [%d] retried", got, ids(rep.Failed), id)
	}
	e := load(t, db, id)
	if e.LeaseOwner != "" || e.LeaseExpiresAt != nil || e.IntentSeq <= before.IntentSeq || e.IntentSeq <= e.HandledSeq ||
		e.DesiredGeneration != before.DesiredGeneration || e.ReapedReason != store.ReapedStuckRetry || e.ReapedGeneration != e.DesiredGeneration {
		t.Errorf("after the retry: lease %q, intent %d (was %d) handled %d, desired %d (was %d), reaped %q@%d",
			e.LeaseOwner, e.IntentSeq, before.IntentSeq, e.HandledSeq, e.DesiredGeneration, before.DesiredGeneration, e.ReapedReason, e.ReapedGeneration)
	}
	if err := store.Renew(ctx, db, id, "wedged-worker", time.Minute); !errors.Is(err, store.ErrLeaseLost) {
		t.Errorf("the wedged worker renewed its lease: %v", err)
	}
	// Nobody may claim it before the wedged worker has noticed.
	if wait := time.Until(e.NextAttemptAt); wait < 30*time.Second || wait > time.Minute {
		t.Errorf("due again in %s, want the Takeover's minute", wait)
	}
	if claimed, err := store.Claim(ctx, db, "eager-worker", time.Minute, 1); err != nil || len(claimed) != 0 {
		t.Errorf("claimed during the takeover: %v, %v", claimed, err)
	}
	exec(t, db, `UPDATE environments SET next_attempt_at = now() WHERE id = ?`, id) // the minute passes
	if rep, _ := r.Sweep(ctx); len(rep.Retried)+len(rep.Failed) != 0 {
		t.Fatalf("retried again at once: %v %v", ids(rep.Retried), ids(rep.Failed))
	}

	// A worker claims the retry and wedges again: no progress for as long.
	claimed, err := store.Claim(ctx, db, "second-worker", time.Minute, 1)
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim the retry: %v %v", claimed, err)
	}
	exec(t, db, `UPDATE environments SET updated_at = now() - interval '2 hours' WHERE id = ?`, id)
	rep, err = r.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(rep.Failed); len(got) != 1 || got[0] != id || len(rep.Retried) != 0 {
		t.Fatalf("failed %v, retried %v; want [%d] failed", got, ids(rep.Retried), id)
	}
	if e := load(t, db, id); e.ReapedReason != store.ReapedStuck || e.ReapedGeneration != e.DesiredGeneration || e.LeaseOwner != "" || e.IntentSeq <= e.HandledSeq {
		t.Errorf("after the second sweep: reaped %q@%d, lease %q, intent %d handled %d", e.ReapedReason, e.ReapedGeneration, e.LeaseOwner, e.IntentSeq, e.HandledSeq)
	}
	if audits(t, db, reaper.ActionStuckRetry, id) != 1 || audits(t, db, reaper.ActionStuck, id) != 1 {
		t.Errorf("audit entries: %d retry, %d stuck", audits(t, db, reaper.ActionStuckRetry, id), audits(t, db, reaper.ActionStuck, id))
	}
}

func TestStuckSweep(t *testing.T) {
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T, db *bun.DB, id int64)
		want  string // "": left alone; else the reaped reason
	}{
		{"retries one whose worker died holding it", func(t *testing.T, db *bun.DB, id int64) {
			stuck(t, db, id, 2*time.Hour, "dead-worker", true)
			exec(t, db, `UPDATE environments SET lease_expires_at = now() - interval '2 hours' WHERE id = ?`, id)
		}, store.ReapedStuckRetry},
		{"retries one nobody will claim", func(t *testing.T, db *bun.DB, id int64) {
			stuck(t, db, id, 2*time.Hour, "", false)
		}, store.ReapedStuckRetry},
		{"leaves one waiting its turn in the queue", func(t *testing.T, db *bun.DB, id int64) {
			stuck(t, db, id, 2*time.Hour, "", true)
		}, ""},
		{"leaves one whose deployment made progress", func(t *testing.T, db *bun.DB, id int64) {
			stuck(t, db, id, 2*time.Hour, "busy-worker", false)
			exec(t, db, `UPDATE deployments SET updated_at = now() - interval '10 minutes' WHERE environment_id = ?`, id)
		}, ""},
		{"leaves one held for less than the deadline", func(t *testing.T, db *bun.DB, id int64) {
			stuck(t, db, id, 30*time.Minute, "busy-worker", false)
		}, ""},
		{"leaves a converged one", func(t *testing.T, db *bun.DB, id int64) {
			exec(t, db, `UPDATE environments SET updated_at = now() - interval '2 hours', lease_owner = 'x' WHERE id = ?`, id)
		}, ""},
		{"only retries a stuck destroy, keeping why it was destroyed", func(t *testing.T, db *bun.DB, id int64) {
			stuck(t, db, id, 2*time.Hour, "wedged-worker", false)
			exec(t, db, `UPDATE environments SET desired_state = 'destroyed', reaped_generation = desired_generation,
			             reaped_reason = 'idle' WHERE id = ?`, id)
		}, store.ReapedIdle},
		{"retries a stuck generation the reaper destroyed earlier", func(t *testing.T, db *bun.DB, id int64) {
			stuck(t, db, id, 2*time.Hour, "wedged-worker", false)
			exec(t, db, `UPDATE environments SET reaped_generation = desired_generation - 1, reaped_reason = 'stuck_retry' WHERE id = ?`, id)
		}, store.ReapedStuckRetry},
	} {
		t.Run(tt.name, func(t *testing.T) {
			db := storetest.New(t)
			id := env(t, db, 1, 72*time.Hour, 0)
			tt.setup(t, db, id)
			before := load(t, db, id)
			rep, err := newReaper(t, reaper.Config{DB: db, StuckAfter: time.Hour}).Sweep(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			e := load(t, db, id)
			if len(rep.Failed) != 0 {
				t.Errorf("failed %v", ids(rep.Failed))
			}
			if tt.want == "" {
				if len(rep.Retried) != 0 || e.IntentSeq != before.IntentSeq || e.LeaseOwner != before.LeaseOwner {
					t.Errorf("retried %v: intent %d (was %d), lease %q (was %q)", ids(rep.Retried), e.IntentSeq, before.IntentSeq, e.LeaseOwner, before.LeaseOwner)
				}
				return
			}
			if len(rep.Retried) != 1 || e.IntentSeq <= e.HandledSeq || e.LeaseOwner != "" || e.ReapedReason != tt.want {
				t.Errorf("retried %v: intent %d handled %d, lease %q, reaped %q; want retried and reaped %q",
					ids(rep.Retried), e.IntentSeq, e.HandledSeq, e.LeaseOwner, e.ReapedReason, tt.want)
			}
		})
	}
}

// cloud is a Provider holding machines in memory. List may be held at a
// gate to catch two sweeps at once.
type cloud struct {
	mu        sync.Mutex
	machines  map[string]provisioner.Machine
	destroyed []string
	listing   chan struct{} // receives when List starts, if set
	gate      chan struct{} // List waits for it to close, if set
}

func newCloud(ms ...provisioner.Machine) *cloud {
	c := &cloud{machines: map[string]provisioner.Machine{}}
	for _, m := range ms {
		c.machines[m.ID] = m
	}
	return c
}

func (c *cloud) Create(ctx context.Context, s provisioner.Spec) (provisioner.Machine, error) {
	return provisioner.Machine{}, errors.New("the reaper never creates")
}

func (c *cloud) State(ctx context.Context, id string) (provisioner.State, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if m, ok := c.machines[id]; ok {
		return m.State, nil
	}
	return provisioner.StateMissing, nil
}

func (c *cloud) Destroy(ctx context.Context, id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.destroyed = append(c.destroyed, id)
	delete(c.machines, id)
	return nil
}

func (c *cloud) List(ctx context.Context) ([]provisioner.Machine, error) {
	if c.listing != nil {
		c.listing <- struct{}{}
	}
	if c.gate != nil {
		select {
		case <-c.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []provisioner.Machine
	for _, m := range c.machines {
		out = append(out, m)
	}
	return out, nil
}

func (c *cloud) gone() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.destroyed...)
}

// agent records a machine attempt of environment envID as fleet.Deployer
// does: key first, machine id once the cloud has answered.
func agent(t *testing.T, db *bun.DB, envID int64, attempt int, machineID string, destroyedAgo time.Duration) string {
	t.Helper()
	key := provisioner.Key(envID, int64(attempt))
	exec(t, db, `
INSERT INTO agents (environment_id, attempt, key, provider, machine_id, bootstrap_hash, state, destroyed_at)
VALUES (?, ?, ?, 'test', ?, ?, CASE WHEN ? > 0 THEN 'destroyed' ELSE 'running' END,
        CASE WHEN ? > 0 THEN now() - make_interval(secs => ?) END)`,
		envID, attempt, key, machineID, "bootstrap-"+key, destroyedAgo.Seconds(), destroyedAgo.Seconds(), destroyedAgo.Seconds())
	return key
}

func TestOrphanedMachinesAreDestroyedAndLiveOnesKept(t *testing.T) {
	db := storetest.New(t)
	ctx := context.Background()
	now := time.Now()
	old, young := now.Add(-time.Hour), now.Add(-time.Minute)
	running := env(t, db, 1, time.Hour, 0)
	destroyed := env(t, db, 2, time.Hour, 0)
	exec(t, db, `UPDATE environments SET desired_state = 'destroyed', desired_generation = desired_generation + 1,
	             observed_state = 'destroyed', observed_generation = desired_generation + 1 WHERE id = ?`, destroyed)
	tearingDown := env(t, db, 3, time.Hour, 0)
	exec(t, db, `UPDATE environments SET desired_state = 'destroyed', desired_generation = desired_generation + 1 WHERE id = ?`, tearingDown)
	creating := env(t, db, 4, time.Hour, 0)

	machine := func(id string, envID int64, key string, created time.Time) provisioner.Machine {
		return provisioner.Machine{ID: id, EnvironmentID: envID, Key: key, State: provisioner.StateRunning, Created: created}
	}
	liveKey := agent(t, db, running, 1, "m-live", 0)
	keep := []provisioner.Machine{
		machine("m-live", running, liveKey, old),
		machine("m-being-created", creating, agent(t, db, creating, 1, "", 0), old),
		machine("m-young", 99, provisioner.Key(99, 1), young),
		machine("m-just-destroyed", running, agent(t, db, running, 3, "m-just-destroyed", time.Minute), old),
		machine("m-tearing-down", tearingDown, agent(t, db, tearingDown, 1, "m-tearing-down", 0), old),
	}
	reap := []provisioner.Machine{
		machine("m-unrecorded", 98, provisioner.Key(98, 1), old),
		machine("m-retired", running, agent(t, db, running, 4, "m-retired", 2*time.Hour), old),
		machine("m-of-destroyed-env", destroyed, agent(t, db, destroyed, 1, "m-of-destroyed-env", 0), old),
		machine("m-duplicate", running, liveKey, old), // its key names m-live
		machine("m-untagged", 0, "", old),
	}
	gone := machine("m-terminated", 97, provisioner.Key(97, 1), old)
	gone.State = provisioner.StateTerminated
	c := newCloud(append(append([]provisioner.Machine{gone}, keep...), reap...)...)

	rep, err := newReaper(t, reaper.Config{DB: db, Provider: c, OrphanGrace: 10 * time.Minute}).Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, m := range reap {
		want[m.ID] = true
	}
	got := map[string]bool{}
	for _, id := range c.gone() {
		got[id] = true
	}
	for _, m := range keep {
		if got[m.ID] {
			t.Errorf("destroyed %s, which is not an orphan", m.ID)
		}
	}
	for id := range want {
		if !got[id] {
			t.Errorf("kept orphan %s", id)
		}
	}
	if len(c.gone()) != len(reap) || len(rep.Orphans) != len(reap) {
		t.Errorf("destroyed %v, reported %d; want %d", c.gone(), len(rep.Orphans), len(reap))
	}
	if n := audits(t, db, reaper.ActionOrphan, 0); n != len(reap) {
		t.Errorf("%d audit entries, want %d", n, len(reap))
	}
	var live int
	if err := db.NewRaw(`SELECT count(*) FROM agents WHERE machine_id = 'm-of-destroyed-env' AND destroyed_at IS NULL`).Scan(ctx, &live); err != nil || live != 0 {
		t.Errorf("the destroyed environment's row still calls its machine live (%d, %v)", live, err)
	}
	if err := db.NewRaw(`SELECT count(*) FROM agents WHERE environment_id = ? AND destroyed_at IS NULL`, running).Scan(ctx, &live); err != nil || live != 1 {
		t.Errorf("%d live rows of the running environment, want 1 (%v)", live, err)
	}
}

func TestMachineWithNoCreationTimeIsTimedFromWhenTheReaperFirstSawIt(t *testing.T) {
	db := storetest.New(t)
	ctx := context.Background()
	now := time.Now()
	c := newCloud(provisioner.Machine{ID: "m-1", EnvironmentID: 5, Key: provisioner.Key(5, 1), State: provisioner.StatePending})
	r := newReaper(t, reaper.Config{DB: db, Provider: c, OrphanGrace: 10 * time.Minute, Now: func() time.Time { return now }})
	for _, step := range []time.Duration{0, 9 * time.Minute} {
		now = now.Add(step)
		if rep, err := r.Sweep(ctx); err != nil || len(rep.Orphans) != 0 {
			t.Fatalf("after %s: destroyed %v, %v", step, rep.Orphans, err)
		}
	}
	now = now.Add(time.Minute)
	if rep, err := r.Sweep(ctx); err != nil || len(rep.Orphans) != 1 {
		t.Fatalf("past the grace: destroyed %v, %v", rep.Orphans, err)
	}
}

func TestTwoReapersAtOnceDestroyAnOrphanOnce(t *testing.T) {
	db := storetest.New(t)
	ctx := context.Background()
	c := newCloud(provisioner.Machine{ID: "m-1", EnvironmentID: 5, Key: provisioner.Key(5, 1), State: provisioner.StateRunning, Created: time.Now().Add(-time.Hour)})
	c.listing, c.gate = make(chan struct{}, 2), make(chan struct{})
	a := newReaper(t, reaper.Config{DB: db, Provider: c})
	b := newReaper(t, reaper.Config{DB: db, Provider: c})

	done := make(chan reaper.Report)
	go func() {
		rep, err := a.Sweep(ctx)
		if err != nil {
			t.Error(err)
		}
		done <- rep
	}()
	<-c.listing // a holds the sweep and is listing
	// b must not wait for a.
	bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	repB, err := b.Sweep(bctx)
	if err != nil {
		t.Fatal(err)
	}
	close(c.gate)
	repA := <-done
	if len(repA.Orphans)+len(repB.Orphans) != 1 || len(c.gone()) != 1 {
		t.Errorf("a destroyed %v, b %v; the cloud saw %v", repA.Orphans, repB.Orphans, c.gone())
	}
	if n := audits(t, db, reaper.ActionOrphan, 0); n != 1 {
		t.Errorf("%d audit entries, want 1", n)
	}
	// The lock is free again: the next sweep lists (and finds nothing).
	if _, err := b.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.listing:
	default:
		t.Error("the next sweep did not list: the sweep lock was not released")
	}
}

func TestNewRejectsUnusableConfig(t *testing.T) {
	db := storetest.New(t)
	for name, cfg := range map[string]reaper.Config{
		"no database":       {},
		"negative interval": {DB: db, Interval: -time.Second},
		"negative grace":    {DB: db, OrphanGrace: -time.Second},
		"tiny stuck-after":  {DB: db, StuckAfter: time.Second},
	} {
		if _, err := reaper.New(cfg); !errors.Is(err, reaper.ErrConfig) && !errors.Is(err, reaper.ErrNoDatabase) {
			t.Errorf("%s: New = %v", name, err)
		}
	}
}

func TestRunSweepsUntilCancelled(t *testing.T) {
	db := storetest.New(t)
	id := env(t, db, 1, time.Hour, 2*time.Hour)
	r := newReaper(t, reaper.Config{DB: db, Interval: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for load(t, db, id).DesiredState != store.DesiredDestroyed {
		if time.Now().After(deadline) {
			t.Fatal("Run did not reap within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
}
