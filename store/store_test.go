package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/migrations"
	"github.com/stagely-dev/stagely/store"
	"github.com/stagely-dev/stagely/store/storetest"
)

var repo = store.RepoRef{InstallationID: 7, RepositoryID: 42, Owner: "octo", Name: "app"}

func pr(sha, desired string, at time.Time) store.PullRequestIntent {
	return store.PullRequestIntent{Repo: repo, PRNumber: 3, HeadRepo: "octo/app", HeadSHA: sha, Desired: desired, UpdatedAt: at}
}

func TestDeliverPullRequestOrdersAndDeduplicatesIntent(t *testing.T) {
	db := storetest.New(t)
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		name        string
		in          store.PullRequestIntent
		wantChanged bool
		wantSHA     string
		wantState   string
		wantGen     int64
	}{
		{"opened", pr("aaa", store.DesiredRunning, t0), true, "aaa", store.DesiredRunning, 1},
		{"same intent again", pr("aaa", store.DesiredRunning, t0.Add(time.Second)), false, "aaa", store.DesiredRunning, 1},
		{"push", pr("bbb", store.DesiredRunning, t0.Add(2*time.Second)), true, "bbb", store.DesiredRunning, 2},
		{"late older push", pr("ccc", store.DesiredRunning, t0.Add(time.Second)), false, "bbb", store.DesiredRunning, 2},
		{"closed", pr("bbb", store.DesiredDestroyed, t0.Add(3*time.Second)), true, "bbb", store.DesiredDestroyed, 3},
	}
	for i, s := range steps {
		d := store.Delivery{ID: fmt.Sprintf("d-%d", i), Event: "pull_request", Action: "synchronize", InstallationID: 7}
		id, dup, err := store.DeliverPullRequest(ctx, db, d, s.in)
		if err != nil || dup {
			t.Fatalf("%s: duplicate %v, %v", s.name, dup, err)
		}
		if changed := id != 0; changed != s.wantChanged {
			t.Errorf("%s: changed = %v, want %v", s.name, changed, s.wantChanged)
		}
		var env store.Environment
		if err := db.NewSelect().Model(&env).Where("pr_number = 3").Scan(ctx); err != nil {
			t.Fatal(err)
		}
		if env.DesiredSHA != s.wantSHA || env.DesiredState != s.wantState || env.DesiredGeneration != s.wantGen {
			t.Errorf("%s: desired = %s@%s gen %d, want %s@%s gen %d", s.name,
				env.DesiredState, env.DesiredSHA, env.DesiredGeneration, s.wantState, s.wantSHA, s.wantGen)
		}
	}
}

func TestDeliverIsOncePerDeliveryAndRetriesFailures(t *testing.T) {
	db := storetest.New(t)
	ctx := context.Background()
	d := store.Delivery{ID: "guid-1", Event: "pull_request", Action: "opened", InstallationID: 7}

	boom := errors.New("boom")
	if _, err := store.Deliver(ctx, db, d, func(ctx context.Context, tx bun.Tx) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("failing delivery: err = %v", err)
	}
	var status string
	if err := db.NewRaw("SELECT status FROM webhook_deliveries WHERE delivery_id = ?", d.ID).Scan(ctx, &status); err != nil || status != "failed" {
		t.Fatalf("after failure status = %q, %v; want failed", status, err)
	}

	calls := 0
	var mu sync.Mutex
	var wg sync.WaitGroup
	dups := 0
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dup, err := store.Deliver(ctx, db, d, func(ctx context.Context, tx bun.Tx) error {
				mu.Lock()
				calls++
				mu.Unlock()
				_, err := store.RecordCommand(ctx, tx, store.CommandIntent{Repo: repo, PRNumber: 3, DeliveryID: d.ID, Source: store.SourceComment, Actor: "a", Name: "redeploy"})
				return err
			})
			if err != nil {
				t.Error(err)
			}
			if dup {
				mu.Lock()
				dups++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if calls != 1 || dups != 9 {
		t.Errorf("redelivery of a failed delivery ran %d times with %d duplicates; want 1 and 9", calls, dups)
	}
}

func TestClaimLeasesEachEnvironmentToOneWorker(t *testing.T) {
	db := storetest.New(t)
	ctx := context.Background()
	for i := range 20 {
		in := pr("aaa", store.DesiredRunning, time.Now())
		in.PRNumber = i + 1
		if _, _, err := store.DeliverPullRequest(ctx, db, store.Delivery{ID: fmt.Sprint(i), Event: "pull_request"}, in); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	seen := map[int64]string{}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := string(rune('A' + w))
			envs, err := store.Claim(ctx, db, owner, time.Minute, 20)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, e := range envs {
				if prev, ok := seen[e.ID]; ok {
					t.Errorf("environment %d claimed by %s and %s", e.ID, prev, owner)
				}
				seen[e.ID] = owner
			}
		}()
	}
	wg.Wait()
	if len(seen) != 20 {
		t.Errorf("claimed %d environments, want 20", len(seen))
	}

	// An expired lease is taken over; the old owner can no longer write.
	var id int64
	for k := range seen {
		id = k
		break
	}
	old := seen[id]
	if _, err := db.NewRaw("UPDATE environments SET lease_expires_at = now() - interval '1 second' WHERE id = ?", id).Exec(ctx); err != nil {
		t.Fatal(err)
	}
	envs, err := store.Claim(ctx, db, "Z", time.Minute, 50)
	if err != nil || len(envs) != 1 || envs[0].ID != id {
		t.Fatalf("takeover claim = %v, %v; want environment %d", envs, err, id)
	}
	if err := store.Renew(ctx, db, id, old, time.Minute); !errors.Is(err, store.ErrLeaseLost) {
		t.Errorf("old owner renew: %v, want ErrLeaseLost", err)
	}
	if err := store.Release(ctx, db, id, "Z", envs[0].IntentSeq, 0, ""); err != nil {
		t.Fatal(err)
	}
	if envs, _ := store.Claim(ctx, db, "Y", time.Minute, 50); len(envs) != 0 {
		t.Errorf("handled environment claimed again: %v", envs)
	}
}

func TestMigrationsRaceSafely(t *testing.T) {
	url := storetest.NewEmptyURL(t)
	ctx := context.Background()
	var mu sync.Mutex
	total := 0
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db, err := store.Open(ctx, url, 2)
			if err != nil {
				t.Error(err)
				return
			}
			defer db.Close()
			applied, err := migrations.Apply(ctx, db)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			total += len(applied)
			mu.Unlock()
		}()
	}
	wg.Wait()
	// Three servers starting at once on an empty database: each migration
	// ran exactly once, and the schema is whole.
	db, err := store.Open(ctx, url, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.NewRaw("SELECT count(*) FROM bun_migrations").Scan(ctx, &n); err != nil {
		t.Fatal(err)
	}
	if total != n || n == 0 {
		t.Errorf("applied %d migrations across racing servers; %d recorded", total, n)
	}
	if _, err := db.NewSelect().Model((*store.Environment)(nil)).Count(ctx); err != nil {
		t.Errorf("schema incomplete: %v", err)
	}
}

func TestDeliverPullRequestIsOncePerDelivery(t *testing.T) {
	db := storetest.New(t)
	ctx := context.Background()
	d := store.Delivery{ID: "same", Event: "pull_request", Action: "opened", InstallationID: 7}
	in := pr("aaa", store.DesiredRunning, time.Now())
	var wg sync.WaitGroup
	var mu sync.Mutex
	firsts := 0
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, dup, err := store.DeliverPullRequest(ctx, db, d, in)
			if err != nil {
				t.Error(err)
			}
			if !dup {
				mu.Lock()
				firsts++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	var gen int64
	if err := db.NewRaw("SELECT desired_generation FROM environments").Scan(ctx, &gen); err != nil {
		t.Fatal(err)
	}
	if firsts != 1 || gen != 1 {
		t.Errorf("10 copies of one delivery: %d processed, generation %d; want 1 and 1", firsts, gen)
	}
}
