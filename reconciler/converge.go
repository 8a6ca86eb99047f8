package reconciler

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/google/go-github/v60/github"
	"github.com/rs/zerolog"

	"github.com/stagely-dev/stagely/app"
	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/comments"
	"github.com/stagely-dev/stagely/ghclient"
	"github.com/stagely-dev/stagely/repoconfig"
	"github.com/stagely-dev/stagely/store"
)

// errSuperseded stops a deployment whose generation is no longer desired.
var errSuperseded = errors.New("superseded")

// errCommanded stops a deployment for a command that came in during it
// from someone who may give it (`/stagely destroy` during the build):
// the command is applied at once instead of after the build.
var errCommanded = errors.New("interrupted by a command")

// maxRetryableAttempts bounds how long a passing fault may keep a
// deployment pending before it is reported as failed.
const maxRetryableAttempts = 6

// session is one worker's hold on one environment.
type session struct {
	r   *Reconciler
	env *store.Environment
	gh  *github.Client
	log zerolog.Logger
}

func (r *Reconciler) converge(ctx context.Context, env *store.Environment) error {
	gh, err := r.cfg.Clients.NewInstallationClient(env.InstallationID)
	if err != nil {
		return fmt.Errorf("github client for installation %d: %w", env.InstallationID, err)
	}
	s := &session{r: r, env: env, gh: gh, log: *zerolog.Ctx(ctx)}
	if err := s.applyCommands(ctx); err != nil {
		return err
	}
	// Each pass converges one generation; a newer one recorded meanwhile
	// (a push during a deploy) is taken up in the same claim.
	for range 20 {
		if err := s.reload(ctx); err != nil {
			return err
		}
		if s.env.DesiredGeneration <= s.env.ObservedGeneration {
			break
		}
		if s.env.DesiredState == store.DesiredDestroyed {
			err = s.destroy(ctx)
		} else {
			err = s.deploy(ctx)
		}
		if errors.Is(err, errSuperseded) {
			continue
		}
		if errors.Is(err, errCommanded) {
			if err := s.applyCommands(ctx); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
	}
	return s.finishCommands(ctx)
}

func (s *session) reload(ctx context.Context) error {
	if err := s.r.cfg.DB.NewSelect().Model(s.env).WherePK().Scan(ctx); err != nil {
		return fmt.Errorf("reload environment %d: %w", s.env.ID, err)
	}
	if s.env.LeaseOwner != s.r.cfg.Owner {
		return fmt.Errorf("environment %d: %w", s.env.ID, store.ErrLeaseLost)
	}
	return nil
}

func (s *session) update(ctx context.Context, set string, args ...any) error {
	return store.UpdateEnvironment(ctx, s.r.cfg.DB, s.env.ID, s.r.cfg.Owner, set, args...)
}

// observe records that generation g has reached state.
func (s *session) observe(ctx context.Context, g int64, state, sha string) error {
	return s.update(ctx, "observed_generation = ?, observed_state = ?, observed_sha = ?, last_error = ''", g, state, sha)
}

func (s *session) target() Target {
	e := s.env
	return Target{EnvironmentID: e.ID, InstallationID: e.InstallationID, Owner: e.Owner, Repo: e.Repo, PR: e.PRNumber, Hash: e.Hash}
}

// deployment returns the row for generation g, creating it on first use.
func (s *session) deployment(ctx context.Context, g int64, sha string) (*store.Deployment, error) {
	d := &store.Deployment{EnvironmentID: s.env.ID, Generation: g, SHA: sha, Status: "queued", Steps: []store.Step{}, Previews: []store.Preview{}}
	if _, err := s.r.cfg.DB.NewInsert().Model(d).On("CONFLICT (environment_id, generation) DO NOTHING").Exec(ctx); err != nil {
		return nil, fmt.Errorf("record deployment %d of environment %d: %w", g, s.env.ID, err)
	}
	d = new(store.Deployment)
	if err := s.r.cfg.DB.NewSelect().Model(d).Where("environment_id = ? AND generation = ?", s.env.ID, g).Scan(ctx); err != nil {
		return nil, fmt.Errorf("load deployment %d of environment %d: %w", g, s.env.ID, err)
	}
	return d, nil
}

func (s *session) saveDeployment(ctx context.Context, d *store.Deployment) error {
	_, err := s.r.cfg.DB.NewUpdate().Model(d).WherePK().
		Column("check_run_id", "status", "conclusion", "steps", "previews", "error", "log_tail", "started_at", "finished_at").
		Set("updated_at = now()").Exec(ctx)
	if err != nil {
		return fmt.Errorf("save deployment %d: %w", d.ID, err)
	}
	return nil
}

// closeStale completes the Check Runs of older generations that were left
// open, as when a server died mid-deploy and a newer push or a destroy
// came before anyone resumed it: no check run may stay "in progress"
// forever on a commit.
func (s *session) closeStale(ctx context.Context, g int64, reason string) error {
	var stale []store.Deployment
	if err := s.r.cfg.DB.NewSelect().Model(&stale).
		Where("environment_id = ? AND generation < ? AND status <> 'completed' AND check_run_id <> 0", s.env.ID, g).
		Scan(ctx); err != nil {
		return fmt.Errorf("find stale deployments of environment %d: %w", s.env.ID, err)
	}
	for i := range stale {
		now := s.r.cfg.Now()
		rep := checks.Report{Status: "completed", Conclusion: "cancelled", SHA: stale[i].SHA, Now: now, Reason: reason,
			Steps: cancelRunning(fromStore(stale[i].Steps), now)}
		if err := s.complete(ctx, &stale[i], rep); err != nil {
			return err
		}
	}
	return nil
}

func (s *session) deploy(ctx context.Context) error {
	g, sha := s.env.DesiredGeneration, s.env.DesiredSHA
	if err := s.closeStale(ctx, g, "superseded by "+short(sha)); err != nil {
		return err
	}
	if sha == "" {
		// Known only through a command that has not resolved a head yet.
		return s.update(ctx, "observed_generation = ?", g)
	}
	d, err := s.deployment(ctx, g, sha)
	if err != nil {
		return err
	}
	if d.Status == "completed" {
		// Finished and reported before a crash; only the environment row
		// was not updated.
		return s.observe(ctx, g, observedOf(d.Conclusion, s.env.ObservedState), sha)
	}
	now := s.r.cfg.Now()
	if d.CheckRunID == 0 {
		id, err := s.checks().Ensure(ctx, s.env.Owner, s.env.Repo, sha, app.ExternalID(s.env.PRNumber, g), checks.Report{Status: "queued", SHA: sha, Now: now})
		if err != nil {
			return fmt.Errorf("create check run for %s: %w", short(sha), err)
		}
		d.CheckRunID = id
		if err := s.saveDeployment(ctx, d); err != nil {
			return err
		}
	}
	if s.env.ReapedGeneration == g && s.env.ReapedReason == store.ReapedStuck {
		// The reaper saw this generation make no progress past its deadline,
		// retried it, and saw no progress again: say so instead of waiting.
		steps := fromStore(d.Steps)
		de := &DeployError{Step: "Deploy", Reason: "no progress past the deadline, even after a retry",
			Hint: "push a commit or comment `/stagely redeploy` to try again"}
		for i := len(steps) - 1; i >= 0; i-- {
			if steps[i].State == checks.StepRunning || steps[i].State == checks.StepPending {
				de.Step = steps[i].Name
				steps = cancelRunning(steps, now)
				steps[i].State = checks.StepFailed
				break
			}
		}
		return s.fail(ctx, d, g, sha, steps, de, now)
	}
	if err := s.update(ctx, "observed_state = ?", store.ObservedQueued); err != nil {
		return err
	}
	if err := s.sticky(ctx, comments.StateQueued, sha, nil, "", d.CreatedAt); err != nil {
		return err
	}

	if s.env.IsFork && !s.env.IsForkApproved {
		rep := checks.Report{Status: "completed", Conclusion: "action_required", SHA: sha, Now: now,
			Reason: "this pull request comes from a fork: a maintainer must comment `/stagely deploy` first"}
		if err := s.complete(ctx, d, rep); err != nil {
			return err
		}
		if err := s.sticky(ctx, comments.StateAwaitingApproval, sha, nil, "", now); err != nil {
			return err
		}
		return s.observe(ctx, g, store.ObservedAwaitingApproval, sha)
	}

	cfg, err := s.loadConfig(ctx, sha)
	var perr *repoconfig.ParseError
	switch {
	case errors.Is(err, repoconfig.ErrNotFound):
		rep := checks.Report{Status: "completed", Conclusion: "neutral", SHA: sha, Now: now,
			Reason: "this repository has no " + repoconfig.FileName + "; add one to enable previews"}
		if err := s.complete(ctx, d, rep); err != nil {
			return err
		}
		if err := s.sticky(ctx, comments.StateNotEnabled, sha, nil, "", now); err != nil {
			return err
		}
		return s.observe(ctx, g, store.ObservedNotEnabled, sha)
	case errors.As(err, &perr):
		msg := repoconfig.FileName + " is invalid:\n" + perr.Error()
		d.Error = msg // for /stagely status
		rep := checks.Report{Status: "completed", Conclusion: "failure", SHA: sha, Now: now, Err: msg,
			Steps: []checks.Step{{Name: "Read " + repoconfig.FileName, State: checks.StepFailed, StartedAt: now, FinishedAt: now}}}
		if err := s.complete(ctx, d, rep); err != nil {
			return err
		}
		if err := s.sticky(ctx, comments.StateInvalidConfig, sha, nil, msg, now); err != nil {
			return err
		}
		return s.observe(ctx, g, store.ObservedInvalidConfig, sha)
	case err != nil:
		return fmt.Errorf("read %s at %s: %w", repoconfig.FileName, short(sha), err)
	}
	cfg.Defaults(s.r.cfg.Defaults)
	if ttl := int64(cfg.TTL / time.Second); ttl != s.env.TTLSeconds {
		// The reaper destroys the preview once it has had no push or
		// command for this long.
		if err := s.update(ctx, "ttl_seconds = ?", ttl); err != nil {
			return err
		}
		s.env.TTLSeconds = ttl
	}

	start := s.r.cfg.Now()
	cfgStep := checks.Step{Name: "Read " + repoconfig.FileName, State: checks.StepSucceeded, StartedAt: start, FinishedAt: start}
	steps := []checks.Step{cfgStep}
	d.Status = "in_progress"
	if d.StartedAt == nil {
		d.StartedAt = &start
	}
	d.Steps = toStore(steps)
	if err := s.saveDeployment(ctx, d); err != nil {
		return err
	}
	if err := s.checks().Update(ctx, s.env.Owner, s.env.Repo, d.CheckRunID, checks.Report{Status: "in_progress", SHA: sha, Steps: steps, Now: start}); err != nil {
		return fmt.Errorf("report progress: %w", err)
	}
	if err := s.update(ctx, "observed_state = ?", store.ObservedDeploying); err != nil {
		return err
	}
	if err := s.sticky(ctx, comments.StateDeploying, sha, nil, "", *d.StartedAt); err != nil {
		return err
	}

	dctx, stop := context.WithCancel(ctx)
	defer stop()
	var newer atomic.Pointer[store.Environment]
	var commanded atomic.Bool
	go s.watchSupersede(dctx, g, stop, &newer, &commanded)
	progress := func(ds []checks.Step) {
		all := append([]checks.Step{cfgStep}, ds...)
		d.Steps = toStore(all)
		if err := s.saveDeployment(ctx, d); err != nil {
			s.log.Warn().Err(err).Msg("persist steps")
		}
		if err := s.checks().Update(ctx, s.env.Owner, s.env.Repo, d.CheckRunID, checks.Report{Status: "in_progress", SHA: sha, Steps: all, Now: s.r.cfg.Now()}); err != nil {
			s.log.Warn().Err(err).Msg("report progress")
		}
	}
	res, derr := s.r.cfg.Deployer.Deploy(dctx, DeployRequest{Target: s.target(), SHA: sha, Generation: g, Config: cfg}, progress)
	stop()
	now = s.r.cfg.Now()
	steps = fromStore(d.Steps)

	if n := newer.Load(); n != nil {
		reason := "superseded by " + short(n.DesiredSHA)
		if n.DesiredState == store.DesiredDestroyed {
			reason = "the environment is being destroyed"
		}
		rep := checks.Report{Status: "completed", Conclusion: "cancelled", SHA: sha, Now: now, Steps: cancelRunning(steps, now), Reason: reason}
		if err := s.report(s.complete(ctx, d, rep)); err != nil {
			return err
		}
		return errSuperseded
	}
	if commanded.Load() {
		// The command decides what becomes of this generation's check: a
		// destroy or a redeploy supersedes it, and closeStale closes it.
		return errCommanded
	}
	if derr != nil {
		var de *DeployError
		if !errors.As(derr, &de) {
			return fmt.Errorf("deploy %s: %w", short(sha), derr)
		}
		if de.Retryable && s.env.Attempts < maxRetryableAttempts {
			return fmt.Errorf("deploy %s: %w", short(sha), derr)
		}
		return s.fail(ctx, d, g, sha, steps, de, now)
	}
	rep := checks.Report{Status: "completed", Conclusion: "success", SHA: sha, Now: now, Steps: steps, Previews: res.Previews, LogTail: ""}
	d.Previews = previewsToStore(res.Previews)
	if err := s.complete(ctx, d, rep); err != nil {
		return err
	}
	if err := s.sticky(ctx, comments.StateReady, sha, res.Previews, "", now); err != nil {
		return err
	}
	return s.observe(ctx, g, store.ObservedRunning, sha)
}

// fail reports deployment d of generation g as failed with de, on the
// Check Run and the comment, and records it.
func (s *session) fail(ctx context.Context, d *store.Deployment, g int64, sha string, steps []checks.Step, de *DeployError, now time.Time) error {
	rep := checks.Report{Status: "completed", Conclusion: "failure", SHA: sha, Now: now, Steps: steps,
		Err: de.Error(), LogTail: de.LogTail, Secrets: nil}
	d.Error, d.LogTail = de.Error(), de.LogTail
	if err := s.complete(ctx, d, rep); err != nil {
		return err
	}
	if err := s.sticky(ctx, comments.StateFailed, sha, nil, de.Error(), now); err != nil {
		return err
	}
	return s.observe(ctx, g, store.ObservedFailed, sha)
}

// watchSupersede cancels a deployment as soon as a newer generation is
// desired, so a push or a destroy never waits for a stale build; and as
// soon as someone who may give it asks for a destroy or a redeploy
// (commanded), which is applied then.
func (s *session) watchSupersede(ctx context.Context, g int64, stop func(), newer *atomic.Pointer[store.Environment], commanded *atomic.Bool) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	checked := map[int64]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var e store.Environment
		if err := s.r.cfg.DB.NewSelect().Model(&e).Column("desired_generation", "desired_state", "desired_sha").
			Where("id = ?", s.env.ID).Scan(ctx); err != nil {
			continue
		}
		if e.DesiredGeneration > g {
			newer.Store(&e)
			stop()
			return
		}
		if s.permittedCommand(ctx, checked) {
			commanded.Store(true)
			stop()
			return
		}
	}
}

// permittedCommand reports whether a destroy or a redeploy is pending from
// someone with write access. Only those interrupt a build: anyone may
// comment, and a command from a reader must not cancel builds. Each
// command is asked about once; checked remembers them.
func (s *session) permittedCommand(ctx context.Context, checked map[int64]bool) bool {
	var cmds []store.Command
	if err := s.r.cfg.DB.NewSelect().Model(&cmds).Column("id", "actor").
		Where("environment_id = ? AND status = ? AND name IN ('destroy', 'redeploy', 'deploy')", s.env.ID, store.CommandPending).
		Scan(ctx); err != nil {
		return false
	}
	for _, c := range cmds {
		if checked[c.ID] {
			continue
		}
		checked[c.ID] = true
		perm, err := comments.Permission(ctx, s.gh.Repositories, s.env.Owner, s.env.Repo, c.Actor)
		if err == nil && comments.CanWrite(perm) {
			return true
		}
	}
	return false
}

// complete finishes deployment d and its Check Run with rep.
func (s *session) complete(ctx context.Context, d *store.Deployment, rep checks.Report) error {
	if err := s.checks().Update(ctx, s.env.Owner, s.env.Repo, d.CheckRunID, rep); err != nil {
		return fmt.Errorf("complete check run (%s): %w", rep.Conclusion, err)
	}
	now := rep.Now
	d.Status, d.Conclusion, d.FinishedAt = "completed", rep.Conclusion, &now
	if rep.Steps != nil {
		d.Steps = toStore(rep.Steps)
	}
	return s.saveDeployment(ctx, d)
}

// destroy tears the environment down, then says so on GitHub. The
// machine goes first: GitHub may refuse the app for good (uninstalled,
// the repository taken out of the installation), and no machine may
// outlive that. Reports GitHub refuses are skipped (report).
func (s *session) destroy(ctx context.Context) error {
	g := s.env.DesiredGeneration
	if err := s.r.cfg.Deployer.Destroy(ctx, s.target()); err != nil {
		return fmt.Errorf("destroy environment %d: %w", s.env.ID, err)
	}
	if err := s.report(s.closeStale(ctx, g, "the environment is being destroyed")); err != nil {
		return err
	}
	now := s.r.cfg.Now()
	// Destroyed by the reaper because nobody pushed or commented within
	// the environment's TTL: the comment says so, and how to come back.
	idle := s.env.ReapedGeneration == g && s.env.ReapedReason == store.ReapedIdle
	last := new(store.Deployment)
	err := s.r.cfg.DB.NewSelect().Model(last).Where("environment_id = ? AND check_run_id <> 0", s.env.ID).
		Order("generation DESC").Limit(1).Scan(ctx)
	if err == nil && (last.Status != "completed" || last.Conclusion == "success" || last.Conclusion == "action_required") {
		conclusion, reason := "neutral", "the environment was destroyed"
		if idle {
			reason = "the environment was destroyed for inactivity: no push or command within its time to live"
		}
		if last.Status != "completed" {
			conclusion = "cancelled"
		}
		rep := checks.Report{Status: "completed", Conclusion: conclusion, SHA: last.SHA, Now: now, Reason: reason,
			Steps: cancelRunning(fromStore(last.Steps), now)}
		if err := s.report(s.complete(ctx, last, rep)); err != nil {
			return err
		}
	}
	if s.env.ObservedState != store.ObservedNew && s.env.ObservedState != store.ObservedNotEnabled {
		st := comments.Sticky{State: comments.StateDestroyed, SHA: s.env.DesiredSHA, UpdatedAt: now}
		if idle {
			st.IdleFor = time.Duration(s.env.TTLSeconds) * time.Second
		}
		if err := s.report(s.putSticky(ctx, st)); err != nil {
			return err
		}
	}
	return s.observe(ctx, g, store.ObservedDestroyed, s.env.ObservedSHA)
}

// report passes on the error of a report to GitHub, unless GitHub refuses
// it for good: then there is nobody to tell, and what the report followed
// (a destroy, a cancelled build) must still be recorded as done.
func (s *session) report(err error) error {
	if err != nil && ghclient.Refused(err) {
		s.log.Warn().Err(err).Msg("report skipped: GitHub refuses the app here")
		return nil
	}
	return err
}

func observedOf(conclusion, current string) string {
	switch conclusion {
	case "success":
		return store.ObservedRunning
	case "failure":
		return store.ObservedFailed
	case "action_required":
		return store.ObservedAwaitingApproval
	}
	return current
}

func cancelRunning(steps []checks.Step, now time.Time) []checks.Step {
	out := make([]checks.Step, len(steps))
	for i, st := range steps {
		if st.State == checks.StepRunning || st.State == checks.StepPending {
			st.State = checks.StepCancelled
			if st.FinishedAt.IsZero() {
				st.FinishedAt = now
			}
		}
		out[i] = st
	}
	return out
}

func toStore(steps []checks.Step) []store.Step {
	out := make([]store.Step, len(steps))
	for i, s := range steps {
		out[i] = store.Step{Name: s.Name, State: string(s.State), StartedAt: s.StartedAt, FinishedAt: s.FinishedAt}
	}
	return out
}

func fromStore(steps []store.Step) []checks.Step {
	out := make([]checks.Step, len(steps))
	for i, s := range steps {
		out[i] = checks.Step{Name: s.Name, State: checks.StepState(s.State), StartedAt: s.StartedAt, FinishedAt: s.FinishedAt}
	}
	return out
}

func previewsToStore(ps []checks.Preview) []store.Preview {
	out := make([]store.Preview, len(ps))
	for i, p := range ps {
		out[i] = store.Preview{Name: p.Name, URL: p.URL}
	}
	return out
}

func short(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}
