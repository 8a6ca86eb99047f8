package app_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/app"
	"github.com/stagely-dev/stagely/store"
	"github.com/stagely-dev/stagely/store/storetest"
)

// The installation every step of TestInstallationStateFollowsItsEvents is
// about: the one of installation.created.1.json. The recorded payloads of
// the other actions were captured on other installations, so each is
// retargeted at this one (its installation object and repository lists)
// to tell one installation's story.
const (
	stateInstallation = 957387
	stateAppID        = 29310
	helloWorldID      = 186853002 // Codertocat/Hello-World, in installation.created.1.json
	spaceID           = 186853007 // Codertocat/Space, in installation_repositories.added.1.json
)

// column is what a nullable timestamp column must hold after a step.
type column int

const (
	isNull  column = iota // NULL
	stamped               // set by this step: between just before and just after it
	kept                  // the non-NULL value it had after the previous step
)

func (c column) String() string {
	return [...]string{"NULL", "set by this step", "unchanged and set"}[c]
}

// envWant is an environment's desired state and generation after a step.
type envWant struct {
	desired    string
	generation int64
}

// TestInstallationStateFollowsItsEvents feeds one installation's life
// through the intake, in order, and checks after each event the columns
// that record it (installations.suspended_at and deleted_at,
// repositories.removed_at), which environments it destroys and which
// environments it wakes the workers for.
func TestInstallationStateFollowsItsEvents(t *testing.T) {
	ctx := context.Background()
	db := storetest.New(t)
	wakes := &wakeRecorder{}
	in := &intake{h: app.NewIntake(&app.Base{DB: db, Wake: wakes, AppID: stateAppID, Logger: zerolog.Nop()}, secret), db: db}

	created := decodeRecorded(t, "installation.created.1.json")
	inst := created["installation"]
	helloWorld := created["repositories"].([]any)[0]
	space := decodeRecorded(t, "installation_repositories.added.1.json")["repositories_added"].([]any)[0]
	onInstallation := func(m map[string]any) { m["installation"] = inst }

	// Environments are named repository#number.
	const hw, sp = "Hello-World#2", "Space#7"
	running := func(g int64) envWant { return envWant{store.DesiredRunning, g} }
	destroyed := func(g int64) envWant { return envWant{store.DesiredDestroyed, g} }

	steps := []struct {
		name  string
		event string
		file  string
		edit  func(m map[string]any)

		suspended, deleted column
		removed            map[int64]column // by repository id
		envs               map[string]envWant
		woken              []string // environments the workers are woken for
	}{
		{
			name: "installed", event: "installation", file: "installation.created.1.json",
			suspended: isNull, deleted: isNull,
			removed: map[int64]column{helloWorldID: isNull},
		},
		{
			name: "pull request on Hello-World", event: "pull_request", file: "pull_request.opened.2.json",
			edit:      onInstallation,
			suspended: isNull, deleted: isNull,
			removed: map[int64]column{helloWorldID: isNull},
			envs:    map[string]envWant{hw: running(1)},
			woken:   []string{hw},
		},
		{
			name: "Space added", event: "installation_repositories", file: "installation_repositories.added.1.json",
			edit:      onInstallation,
			suspended: isNull, deleted: isNull,
			removed: map[int64]column{helloWorldID: isNull, spaceID: isNull},
			envs:    map[string]envWant{hw: running(1)},
		},
		{
			name: "pull request on Space", event: "pull_request", file: "pull_request.opened.2.json",
			edit: func(m map[string]any) {
				onInstallation(m)
				onRepository(m, space, 7)
			},
			suspended: isNull, deleted: isNull,
			removed: map[int64]column{helloWorldID: isNull, spaceID: isNull},
			envs:    map[string]envWant{hw: running(1), sp: running(1)},
			woken:   []string{sp},
		},
		{
			// A suspension is recorded; the previews are left as they are.
			name: "suspended", event: "installation", file: "installation.suspend.1.json",
			edit:      onInstallation,
			suspended: stamped, deleted: isNull,
			removed: map[int64]column{helloWorldID: isNull, spaceID: isNull},
			envs:    map[string]envWant{hw: running(1), sp: running(1)},
		},
		{
			name: "unsuspended", event: "installation", file: "installation.unsuspend.1.json",
			edit:      onInstallation,
			suspended: isNull, deleted: isNull,
			removed: map[int64]column{helloWorldID: isNull, spaceID: isNull},
			envs:    map[string]envWant{hw: running(1), sp: running(1)},
		},
		{
			// Nothing may outlive Stagely's access: the removed repository's
			// previews are destroyed, the other repository's are not.
			name: "Space removed", event: "installation_repositories", file: "installation_repositories.removed.1.json",
			edit: func(m map[string]any) {
				onInstallation(m)
				m["repositories_removed"] = []any{space}
			},
			suspended: isNull, deleted: isNull,
			removed: map[int64]column{helloWorldID: isNull, spaceID: stamped},
			envs:    map[string]envWant{hw: running(1), sp: destroyed(2)},
			woken:   []string{sp},
		},
		{
			// Uninstalling destroys every preview of the installation; the
			// one already destroyed is not asked again.
			name: "uninstalled", event: "installation", file: "installation.deleted.1.json",
			edit: func(m map[string]any) {
				onInstallation(m)
				m["repositories"] = []any{helloWorld}
			},
			suspended: isNull, deleted: stamped,
			removed: map[int64]column{helloWorldID: isNull, spaceID: kept},
			envs:    map[string]envWant{hw: destroyed(2), sp: destroyed(2)},
			woken:   []string{hw},
		},
		{
			// Installing again clears deleted_at; destroyed previews stay
			// destroyed until a pull request event asks for them.
			name: "installed again", event: "installation", file: "installation.created.2.json",
			edit:      onInstallation,
			suspended: isNull, deleted: isNull,
			removed: map[int64]column{helloWorldID: isNull, spaceID: kept},
			envs:    map[string]envWant{hw: destroyed(2), sp: destroyed(2)},
		},
		{
			name: "Space added again", event: "installation_repositories", file: "installation_repositories.added.2.json",
			edit:      onInstallation,
			suspended: isNull, deleted: isNull,
			removed: map[int64]column{helloWorldID: isNull, spaceID: isNull},
			envs:    map[string]envWant{hw: destroyed(2), sp: destroyed(2)},
		},
	}

	prevInst := store.Installation{}
	prevRepos := map[int64]store.Repository{}
	for i, s := range steps {
		ok := t.Run(s.name, func(t *testing.T) {
			body := recorded(t, s.file)
			if s.edit != nil {
				m := decodeRecorded(t, s.file)
				s.edit(m)
				body = mustJSON(t, m)
			}
			wakes.reset()
			before := dbNow(t, db)
			if w := in.post(s.event, fmt.Sprintf("state-%d", i), body, sign(body, secret)); w.Code != http.StatusOK {
				t.Fatalf("%s: status %d, want 200: %s", s.file, w.Code, w.Body)
			}
			after := dbNow(t, db)
			within := func(what string, c column, got, prev *time.Time) {
				t.Helper()
				switch {
				case c == isNull && got != nil:
					t.Errorf("%s = %s, want NULL", what, got.Format(time.RFC3339Nano))
				case c != isNull && got == nil:
					t.Errorf("%s is NULL, want %s", what, c)
				case c == stamped && (got.Before(before) || got.After(after)):
					t.Errorf("%s = %s, want set by this step (between %s and %s)", what, got.Format(time.RFC3339Nano),
						before.Format(time.RFC3339Nano), after.Format(time.RFC3339Nano))
				case c == kept && (prev == nil || !got.Equal(*prev)):
					t.Errorf("%s = %s, want unchanged from the previous step (%v)", what, got.Format(time.RFC3339Nano), prev)
				}
			}

			var insts []store.Installation
			if err := db.NewSelect().Model(&insts).Scan(ctx); err != nil {
				t.Fatal(err)
			}
			if len(insts) != 1 || insts[0].ID != stateInstallation {
				t.Fatalf("installations %+v, want only %d", insts, stateInstallation)
			}
			got := insts[0]
			if got.AccountLogin != "Codertocat" || got.AccountType != "User" {
				t.Errorf("installation account %s (%s), want Codertocat (User)", got.AccountLogin, got.AccountType)
			}
			within("installations.suspended_at", s.suspended, got.SuspendedAt, prevInst.SuspendedAt)
			within("installations.deleted_at", s.deleted, got.DeletedAt, prevInst.DeletedAt)
			prevInst = got

			var repos []store.Repository
			if err := db.NewSelect().Model(&repos).Order("id").Scan(ctx); err != nil {
				t.Fatal(err)
			}
			if len(repos) != len(s.removed) {
				t.Errorf("%d repositories, want %d", len(repos), len(s.removed))
			}
			for _, r := range repos {
				c, ok := s.removed[r.ID]
				if !ok {
					t.Errorf("unexpected repository %d %s/%s", r.ID, r.Owner, r.Name)
					continue
				}
				if r.InstallationID != stateInstallation || r.Owner != "Codertocat" {
					t.Errorf("repository %s/%s in installation %d, want Codertocat's in %d", r.Owner, r.Name, r.InstallationID, stateInstallation)
				}
				var prev *time.Time
				if p, ok := prevRepos[r.ID]; ok {
					prev = p.RemovedAt
				}
				within("removed_at of "+r.Owner+"/"+r.Name, c, r.RemovedAt, prev)
				prevRepos[r.ID] = r
			}

			var envs []store.Environment
			if err := db.NewSelect().Model(&envs).Scan(ctx); err != nil {
				t.Fatal(err)
			}
			ids := map[string]string{} // environment id → name
			gotEnvs := map[string]envWant{}
			for _, e := range envs {
				name := fmt.Sprintf("%s#%d", e.Repo, e.PRNumber)
				ids[fmt.Sprint(e.ID)] = name
				gotEnvs[name] = envWant{e.DesiredState, e.DesiredGeneration}
				if e.IntentSeq != e.DesiredGeneration {
					t.Errorf("%s: intent_seq %d, want it to move with the desired generation (%d)", name, e.IntentSeq, e.DesiredGeneration)
				}
			}
			if fmt.Sprint(gotEnvs) != fmt.Sprint(orEmpty(s.envs)) {
				t.Errorf("environments (desired state, generation) %v, want %v", gotEnvs, orEmpty(s.envs))
			}

			var woken []string
			for _, id := range wakes.take() {
				woken = append(woken, ids[id])
			}
			slices.Sort(woken)
			want := slices.Clone(s.woken)
			slices.Sort(want)
			if strings.Join(woken, ",") != strings.Join(want, ",") {
				t.Errorf("workers woken for [%s], want [%s]", strings.Join(woken, ","), strings.Join(want, ","))
			}
		})
		if !ok {
			break // every later step builds on this one's state
		}
	}
}

// onRepository moves a recorded pull_request payload to repository repo
// (a short repository object of an installation event) as pull request
// number: its head is a branch of that repository, not a fork.
func onRepository(m map[string]any, repo any, number int) {
	r := repo.(map[string]any)
	m["number"] = number
	target := m["repository"].(map[string]any)
	target["id"], target["name"], target["full_name"] = r["id"], r["name"], r["full_name"]
	pr := m["pull_request"].(map[string]any)
	pr["number"] = number
	for _, side := range []string{"head", "base"} {
		sr := pr[side].(map[string]any)["repo"].(map[string]any)
		sr["id"], sr["name"], sr["full_name"] = r["id"], r["name"], r["full_name"]
	}
}

func decodeRecorded(t *testing.T, name string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := jsonDecoder(strings.NewReader(string(recorded(t, name)))).Decode(&m); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return m
}

// dbNow is Postgres's clock, which stamps the columns.
func dbNow(t *testing.T, db *bun.DB) time.Time {
	t.Helper()
	var now time.Time
	if err := db.QueryRowContext(context.Background(), "SELECT clock_timestamp()").Scan(&now); err != nil {
		t.Fatal(err)
	}
	return now
}

func orEmpty(m map[string]envWant) map[string]envWant {
	if m == nil {
		return map[string]envWant{}
	}
	return m
}

// wakeRecorder is an app.Publisher that remembers, in order, the
// environments the handlers woke the workers for.
type wakeRecorder struct {
	mu  sync.Mutex
	ids []string
}

func (w *wakeRecorder) Publish(_ context.Context, channel, msg string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if channel == app.WakeChannel {
		w.ids = append(w.ids, msg)
	}
	return nil
}

func (w *wakeRecorder) reset() { w.take() }

func (w *wakeRecorder) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	ids := w.ids
	w.ids = nil
	return ids
}
