package reaper_test

import (
	"context"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/reaper"
	"github.com/stagely-dev/stagely/store/storetest"
)

// A TTL counts from the last push or command, and a deploy can take longer
// than the shortest TTL .stagely.yml allows (10 minutes against a build
// timeout of up to 3 hours): the preview must not be reaped as idle while
// it is still being deployed, nor as soon as it is ready, or a slow build
// never shows its preview at all.
func TestIdleSweepSparesAPreviewThatIsDeployingOrJustReady(t *testing.T) {
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T, db *bun.DB, id int64)
	}{
		{"a deploy longer than the TTL, still in progress", func(t *testing.T, db *bun.DB, id int64) {
			stuck(t, db, id, time.Minute, "busy-worker", false) // unconverged, progress a minute ago
		}},
		{"a deploy longer than the TTL, ready a minute ago", func(t *testing.T, db *bun.DB, id int64) {
			exec(t, db, `
INSERT INTO deployments (environment_id, generation, sha, status, conclusion, started_at, finished_at)
SELECT id, observed_generation, observed_sha, 'completed', 'success', now() - interval '19 minutes', now() - interval '1 minute'
  FROM environments WHERE id = ?
ON CONFLICT (environment_id, generation) DO UPDATE SET status = 'completed', finished_at = excluded.finished_at`, id)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			db := storetest.New(t)
			id := env(t, db, 1, 10*time.Minute, 20*time.Minute) // last push 20 minutes ago, TTL 10
			tt.setup(t, db, id)
			rep, err := newReaper(t, reaper.Config{DB: db}).Sweep(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Idle) != 0 {
				t.Errorf("reaped %v as idle", ids(rep.Idle))
			}
		})
	}
}
