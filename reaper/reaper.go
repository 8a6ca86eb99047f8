// Package reaper guarantees that nothing Stagely makes outlives its
// purpose. Every Interval it sweeps for:
//
//   - idle previews: an environment that wants to run but has had no push
//     or command (touched_at) for longer than its time to live (the TTL of
//     its last deploy, from .stagely.yml or the server's default) is asked
//     to be destroyed;
//   - stuck environments: one that has not reached its desired generation
//     and has shown no progress for StuckAfter, although a worker holds it
//     or nobody will pick it up again, is retried once; if it is still stuck
//     after that, the reconciler reports the deployment as failed;
//   - orphaned machines: a machine carrying this Stagely's tags that no
//     live environment records (after a crash between creating it and
//     recording it, say) is destroyed, unless it is younger than
//     OrphanGrace.
//
// The reaper does not tear environments down itself. It writes desired
// state the way a webhook does (a new desired generation, intent_seq moved
// on, due now), so the reconciler destroys or retries through its normal,
// crash-safe path and the Check Run and the pull request comment say what
// happened and why. Only orphaned machines, which no environment owns, are
// destroyed directly through the Provider. Any number of servers may run a
// reaper against one database: each environment is marked by one UPDATE …
// FOR UPDATE SKIP LOCKED … RETURNING that re-checks its condition on the
// row as it is now, and the orphan sweep runs on one server at a time under
// an advisory lock. Every reaping is written to the audit log.
//
// Closed and merged pull requests are not the reaper's job: their webhook
// asks for the destroy directly.
package reaper

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/app"
	"github.com/stagely-dev/stagely/provisioner"
)

// Actor is who the reaper's audit log entries name.
const Actor = "stagely:reaper"

// Audit log actions, one entry per reaping.
const (
	ActionIdle       = "reaper.idle"        // an idle environment asked to be destroyed
	ActionStuckRetry = "reaper.stuck_retry" // a stuck environment retried
	ActionStuck      = "reaper.stuck"       // a stuck environment to be reported failed
	ActionOrphan     = "reaper.orphan"      // an orphaned machine destroyed
)

// Errors New returns for a Config it cannot use.
var (
	ErrNoDatabase = errors.New("reaper: Config.DB is required")
	ErrConfig     = errors.New("reaper: invalid configuration")
)

// Publisher is the part of the shared store that wakes the reconcilers.
type Publisher interface {
	Publish(ctx context.Context, channel, msg string) error
}

// Config configures a Reaper. Zero fields take the defaults in
// withDefaults.
type Config struct {
	// DB is Stagely's database, shared with the reconcilers.
	DB *bun.DB
	// Provider lists and destroys machines for the orphan sweep. Nil skips
	// that sweep: a server that makes no machines leaves none behind.
	Provider provisioner.Provider
	// Wake, if set, tells the reconcilers at once about an environment the
	// reaper marked; without it they find it at their next poll.
	Wake Publisher
	// Interval is the time between sweeps. Each wait is drawn between 3/4
	// and 5/4 of it, so servers started together do not sweep together.
	// Default 1 minute.
	Interval time.Duration
	// OrphanGrace is how old an unrecorded machine must be before it is an
	// orphan. A machine is recorded (its agents row, by key) before it is
	// created, but a cloud's list and a database read are not one snapshot,
	// and a machine whose cloud reports no creation time is timed from when
	// this reaper first saw it. Default 10 minutes.
	OrphanGrace time.Duration
	// StuckAfter is how long an environment that has not converged may go
	// without progress (no write to it or to its deployments) before it is
	// stuck. It must exceed the longest step that reports nothing while it
	// runs: a build may take up to .stagely.yml's maximum build.timeout of
	// 3 hours. Default 4 hours.
	StuckAfter time.Duration
	// Takeover is how long a stuck environment, released from its worker,
	// waits before any worker may claim it again. It must be longer than
	// the reconcilers' lease renewal period (a third of their Lease), so
	// that the old worker finds its lease gone and stops before a new one
	// starts: workers of one process share a lease owner, and a claim by
	// its neighbour would otherwise look to it like its own lease. Twice
	// the reconcilers' Lease is safe. Default 1 minute.
	Takeover time.Duration
	// Batch bounds how many environments one sweep marks for each reason;
	// the rest wait for the next sweep. Default 100.
	Batch int
	// Logger receives one line per reaping.
	Logger zerolog.Logger
	// Now is the clock machine ages are measured with (Postgres's clock
	// times the environments). Default time.Now.
	Now func() time.Time
}

func (c *Config) withDefaults() error {
	if c.DB == nil {
		return ErrNoDatabase
	}
	if c.Interval == 0 {
		c.Interval = time.Minute
	}
	if c.OrphanGrace == 0 {
		c.OrphanGrace = 10 * time.Minute
	}
	if c.StuckAfter == 0 {
		c.StuckAfter = 4 * time.Hour
	}
	if c.Takeover == 0 {
		c.Takeover = time.Minute
	}
	if c.Batch == 0 {
		c.Batch = 100
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	switch {
	case c.Interval < 0:
		return fmt.Errorf("%w: Interval %s is negative", ErrConfig, c.Interval)
	case c.OrphanGrace < 0:
		return fmt.Errorf("%w: OrphanGrace %s is negative", ErrConfig, c.OrphanGrace)
	case c.StuckAfter < time.Minute:
		return fmt.Errorf("%w: StuckAfter %s is under a minute; a healthy deploy would look stuck", ErrConfig, c.StuckAfter)
	case c.Takeover < 0:
		return fmt.Errorf("%w: Takeover %s is negative", ErrConfig, c.Takeover)
	case c.Batch < 0:
		return fmt.Errorf("%w: Batch %d is negative", ErrConfig, c.Batch)
	}
	return nil
}

// Reaper sweeps for idle and stuck environments and orphaned machines.
type Reaper struct {
	cfg Config
	log zerolog.Logger

	mu sync.Mutex
	// seen is when this reaper first listed each machine whose cloud does
	// not say when it was made, by machine id.
	seen map[string]time.Time
}

// New checks cfg and returns a Reaper; Run starts it.
func New(cfg Config) (*Reaper, error) {
	if err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	return &Reaper{cfg: cfg, log: cfg.Logger.With().Str("component", "reaper").Logger(), seen: map[string]time.Time{}}, nil
}

// Run sweeps every Interval, jittered, until ctx ends. A failed sweep is
// logged and the next one tries again; Run returns nil when ctx ends.
func (r *Reaper) Run(ctx context.Context) error {
	t := time.NewTimer(r.wait())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, err := r.Sweep(ctx); err != nil && ctx.Err() == nil {
			r.log.Error().Err(err).Msg("sweep")
		}
		t.Reset(r.wait())
	}
}

func (r *Reaper) wait() time.Duration {
	d := r.cfg.Interval
	return d*3/4 + rand.N(d/2+1)
}

// Reaped is an environment the reaper marked.
type Reaped struct {
	EnvironmentID int64
	Repo          string // owner/name
	PR            int
	Generation    int64 // the desired generation the reconciler now works on
}

// Report is what one sweep did.
type Report struct {
	Idle    []Reaped              // asked to be destroyed after their TTL
	Retried []Reaped              // stuck, retried
	Failed  []Reaped              // stuck after a retry, to be reported failed
	Orphans []provisioner.Machine // destroyed
}

// Sweep runs one pass of every sweep and reports what it did. The sweeps
// are independent: one failing does not stop the others, and the errors
// are joined.
func (r *Reaper) Sweep(ctx context.Context) (Report, error) {
	var rep Report
	var errs []error
	var err error
	if rep.Idle, err = r.sweepIdle(ctx); err != nil {
		errs = append(errs, err)
	}
	if rep.Retried, rep.Failed, err = r.sweepStuck(ctx); err != nil {
		errs = append(errs, err)
	}
	if rep.Orphans, err = r.sweepOrphans(ctx); err != nil {
		errs = append(errs, err)
	}
	return rep, errors.Join(errs...)
}

// wake tells the reconcilers environment id has new intent.
func (r *Reaper) wake(ctx context.Context, id int64) {
	if r.cfg.Wake == nil {
		return
	}
	if err := r.cfg.Wake.Publish(ctx, app.WakeChannel, strconv.FormatInt(id, 10)); err != nil {
		r.log.Warn().Err(err).Int64("environment", id).Msg("wake reconciler")
	}
}
