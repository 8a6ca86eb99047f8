// Package reconciler drives each environment from its observed state to
// its desired state, one idempotent, persisted step at a time: authorise
// and apply commands, read .stagely.yml, report on the Check Run and the
// sticky comment, and hand deploying and destroying to a Deployer. Workers
// on any number of processes share the work through leased claims in
// Postgres; a crashed worker's lease expires and another resumes its work.
//
// It does not provision machines or run compose projects itself: that is
// the Deployer's job (package provisioner and the agent).
package reconciler

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/palantir/go-githubapp/githubapp"
	"github.com/rs/zerolog"
	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/app"
	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/repoconfig"
	"github.com/stagely-dev/stagely/store"
)

// Deployer makes an environment's machine run a commit, or tears it down.
// Both must be idempotent: after a crash the reconciler calls them again
// for the same generation.
type Deployer interface {
	// Deploy brings the environment to req.SHA, reporting step progress
	// through progress. A *DeployError says which step failed and why.
	Deploy(ctx context.Context, req DeployRequest, progress func([]checks.Step)) (DeployResult, error)
	// Destroy removes everything the environment has.
	Destroy(ctx context.Context, t Target) error
}

// Target identifies an environment to a Deployer.
type Target struct {
	EnvironmentID  int64
	InstallationID int64
	Owner, Repo    string
	PR             int
	Hash           string // the preview host label
}

// DeployRequest asks for one generation of an environment.
type DeployRequest struct {
	Target
	SHA        string
	Generation int64
	Config     *repoconfig.Config
}

// DeployResult is a successful deployment.
type DeployResult struct {
	Previews []checks.Preview
	LogTail  string
}

// DeployError is a failed deployment, told so the user can act on it.
type DeployError struct {
	Step      string // the step that failed
	Reason    string // what went wrong
	Hint      string // what the user can do
	LogTail   string
	Retryable bool // a passing fault (rate limit, capacity): try again later
}

func (e *DeployError) Error() string {
	s := e.Step + ": " + e.Reason
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

// Subscriber is the part of the shared store the reconciler listens on.
type Subscriber interface {
	Subscribe(ctx context.Context, channel string, fn func(msg string)) error
}

// Config configures a Reconciler.
type Config struct {
	DB       *bun.DB
	Wake     Subscriber
	Clients  githubapp.ClientCreator
	BotLogin string // the app's bot user, e.g. "stagely[bot]"
	Deployer Deployer
	Defaults repoconfig.Defaults

	// Workers is how many environments this process works on at once.
	Workers int
	// Lease is how long a claim lasts without renewal; a crashed worker's
	// environments wait this long before another worker takes them.
	Lease time.Duration
	// Poll is how often workers look for work without a wake-up, the
	// fallback when a pub/sub message is lost.
	Poll time.Duration
	// Owner names this process in leases; unique per process.
	Owner  string
	Logger zerolog.Logger
	Now    func() time.Time
}

func (c *Config) defaults() error {
	if c.DB == nil || c.Clients == nil || c.Deployer == nil {
		return errors.New("reconciler: DB, Clients and Deployer are required")
	}
	if c.BotLogin == "" {
		return errors.New("reconciler: BotLogin is required to find the sticky comment")
	}
	if c.Workers <= 0 {
		c.Workers = 8
	}
	if c.Lease <= 0 {
		c.Lease = 30 * time.Second
	}
	if c.Poll <= 0 {
		c.Poll = 2 * time.Second
	}
	if c.Owner == "" {
		host, _ := os.Hostname()
		c.Owner = fmt.Sprintf("%s/%d/%d", host, os.Getpid(), rand.Int64())
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Reconciler runs the workers of one process.
type Reconciler struct {
	cfg Config
	log zerolog.Logger
}

// New checks cfg and returns a Reconciler; Run starts it.
func New(cfg Config) (*Reconciler, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	return &Reconciler{cfg: cfg, log: cfg.Logger.With().Str("component", "reconciler").Str("owner", cfg.Owner).Logger()}, nil
}

// Run claims and works on environments until ctx ends, then waits for the
// work in hand to stop.
func (r *Reconciler) Run(ctx context.Context) error {
	wake := make(chan struct{}, 1)
	poke := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	if r.cfg.Wake != nil {
		if err := r.cfg.Wake.Subscribe(ctx, app.WakeChannel, func(string) { poke() }); err != nil {
			r.log.Warn().Err(err).Msg("no wake-ups; polling only")
		}
	}
	slots := make(chan struct{}, r.cfg.Workers)
	var wg sync.WaitGroup
	defer wg.Wait()
	ticker := time.NewTicker(r.cfg.Poll)
	defer ticker.Stop()
	for {
		free := r.cfg.Workers - len(slots)
		if free > 0 {
			envs, err := store.Claim(ctx, r.cfg.DB, r.cfg.Owner, r.cfg.Lease, free)
			if err != nil && ctx.Err() == nil {
				r.log.Error().Err(err).Msg("claim")
			}
			for _, env := range envs {
				slots <- struct{}{}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() { <-slots; poke() }()
					r.work(ctx, env)
				}()
			}
			if len(envs) == free {
				continue // there may be more waiting
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-ticker.C:
		}
	}
}

// work holds env's lease while it converges, renewing it, and releases it
// at the end: handled if everything claimed was dealt with, or due again
// after a backoff if a passing fault stopped it.
func (r *Reconciler) work(ctx context.Context, env store.Environment) {
	log := r.log.With().Int64("environment", env.ID).Str("repo", env.FullName()).Int("pr", env.PRNumber).Logger()
	ctx = log.WithContext(ctx)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The renewer has its own copy of the id: converge rewrites env.
	id := env.ID
	renewDone := make(chan struct{})
	go func() {
		defer close(renewDone)
		t := time.NewTicker(r.cfg.Lease / 3)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.C:
				if err := store.Renew(wctx, r.cfg.DB, id, r.cfg.Owner, r.cfg.Lease); err != nil {
					if wctx.Err() == nil {
						log.Warn().Err(err).Msg("lease renewal failed; stopping")
						cancel()
					}
					return
				}
			}
		}
	}()

	claimedSeq := env.IntentSeq
	err := r.converge(wctx, &env)
	cancel()
	<-renewDone
	if ctx.Err() != nil || errors.Is(err, store.ErrLeaseLost) {
		return // shutting down or taken over: the lease lapses or is someone else's
	}
	rctx := context.WithoutCancel(ctx)
	if err != nil {
		retry := backoff(env.Attempts)
		log.Warn().Err(err).Dur("retry_in", retry).Msg("converge failed; will retry")
		if rerr := store.Release(rctx, r.cfg.DB, env.ID, r.cfg.Owner, 0, retry, err.Error()); rerr != nil {
			log.Error().Err(rerr).Msg("release lease")
		}
		return
	}
	if err := store.Release(rctx, r.cfg.DB, env.ID, r.cfg.Owner, claimedSeq, 0, ""); err != nil {
		log.Error().Err(err).Msg("release lease")
	}
}

// backoff is the wait before retry n+1: 1 s doubling to 5 min, jittered so
// environments that failed together do not retry together.
func backoff(attempts int) time.Duration {
	d := time.Second << min(attempts, 9)
	if d > 5*time.Minute {
		d = 5 * time.Minute
	}
	return d/2 + rand.N(d/2+1)
}
