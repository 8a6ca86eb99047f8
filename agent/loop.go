package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"time"

	"github.com/stagely-dev/stagely/agent/protocol"
)

// Agent drives an Engine from the server: it long-polls for the desired
// deployment, fetches the source, deploys or destroys, reports every step
// and streams the build and run logs.
type Agent struct {
	Engine *Engine
	// Client reaches the server; its Token is the agent token (see
	// package bootstrap).
	Client *protocol.Client
	// PollWait is how long one poll may wait; zero means 50s.
	PollWait time.Duration
	// LogLines is each log buffer's capacity; zero means
	// logs.DefaultBufferLines.
	LogLines int
	// Logf receives the agent's own diagnostics; nil drops them.
	Logf func(format string, args ...any)
	// OnDeployment, if set, is told each deployment as it arrives, before
	// it is applied: the tunnel uses it to map hostnames to services.
	OnDeployment func(*protocol.Deployment)
	// SourceRetryFor is how long fetching a deployment's source is retried
	// while the server cannot be reached or the stream breaks off; zero
	// means 10 minutes.
	SourceRetryFor time.Duration
	// LogFlush is how long the log lines still queued when a deployment
	// is done may take to reach the server; zero means 30s. Steps are not
	// bound by it: they are sent until they land.
	LogFlush time.Duration
}

// Run serves deployments until ctx ends (it then returns nil) or the
// server refuses the agent's token (it returns that error: a restart will
// not help).
func (a *Agent) Run(ctx context.Context) error {
	if a.Logf == nil {
		a.Logf = func(string, ...any) {}
	}
	wait := a.PollWait
	if wait <= 0 {
		wait = 50 * time.Second
	}
	var follow follower
	defer follow.stop()
	var after int64
	b := newBackoff()
	for ctx.Err() == nil {
		d, err := a.Client.Poll(ctx, after, wait)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if errors.Is(err, protocol.ErrUnauthorized) {
				return fmt.Errorf("agent: %w", err)
			}
			a.Logf("poll: %v", err)
			b.wait(ctx)
			continue
		}
		b.reset()
		for d != nil && ctx.Err() == nil {
			after = d.Generation
			if a.OnDeployment != nil {
				a.OnDeployment(d)
			}
			d = a.applyUntilSuperseded(ctx, d, &follow, wait)
		}
	}
	return nil
}

// applyUntilSuperseded applies d while it keeps polling for a newer
// deployment. A newer one (a push, a destroy when the pull request
// closes) cancels d's work, which may be a build that takes many minutes
// or never ends, and is returned to be applied next.
func (a *Agent) applyUntilSuperseded(ctx context.Context, d *protocol.Deployment, follow *follower, wait time.Duration) *protocol.Deployment {
	work, cancel := context.WithCancel(ctx)
	defer cancel()
	var newer *protocol.Deployment // set by the watcher before watched closes
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		b := newBackoff()
		for work.Err() == nil {
			nd, err := a.Client.Poll(work, d.Generation, wait)
			switch {
			case err != nil:
				b.wait(work)
			case nd != nil:
				a.Logf("environment %s: generation %d supersedes generation %d", nd.EnvironmentID, nd.Generation, d.Generation)
				newer = nd
				cancel()
				return
			default:
				b.reset()
			}
		}
	}()
	a.apply(ctx, work, d, follow)
	cancel()
	<-watched
	return newer
}

// apply acts on one deployment and reports it. work bounds the deploy or
// destroy (it ends when a newer deployment supersedes this one); ctx, the
// agent's, bounds the reports and the log follower.
func (a *Agent) apply(ctx, work context.Context, d *protocol.Deployment, follow *follower) {
	rep := newRemoteReporter(ctx, a.Client, d.EnvironmentID, d.Generation, a.LogLines, a.Logf)
	logFlush := a.LogFlush
	if logFlush <= 0 {
		logFlush = 30 * time.Second
	}
	defer func() {
		flush, cancel := context.WithTimeout(context.WithoutCancel(ctx), logFlush)
		defer cancel()
		rep.Close(flush)
	}()

	if d.Action == protocol.ActionDestroy {
		follow.stop()
		if err := a.Engine.Destroy(work, *d, rep); err != nil {
			a.Logf("%v", err)
		}
		return
	}
	src, info, err := a.fetchSource(work, d)
	if err != nil {
		now := time.Now()
		rep.Step(protocol.StepReport{EnvironmentID: d.EnvironmentID, Generation: d.Generation, Name: StepSource,
			State: protocol.StepFailed, Started: now, Finished: now, Message: "fetch source: " + err.Error()})
		a.Logf("environment %s, generation %d: fetch source: %v", d.EnvironmentID, d.Generation, err)
		return
	}
	_, err = a.Engine.Deploy(work, *d, Source{Body: src, StripTopLevel: info.StripTopLevel}, rep)
	src.Close()
	if err != nil {
		a.Logf("%v", err)
		if errors.Is(err, ErrInvalidDeployment) || work.Err() != nil {
			return // invalid, or superseded: the next deployment follows its own
		}
	}
	// Follow the (re)deployed containers, with this generation's masker
	// and log stream, until the next deployment.
	follow.stop()
	follow.start(ctx, func(ctx context.Context) {
		runRep := newRemoteReporter(ctx, a.Client, d.EnvironmentID, d.Generation, a.LogLines, a.Logf)
		defer func() {
			flush, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			runRep.Close(flush)
		}()
		if err := a.Engine.FollowLogs(ctx, d.EnvironmentID, runRep); err != nil {
			a.Logf("%v", err)
		}
	})
}

// follower owns the goroutine that follows the current deployment's logs.
type follower struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func (f *follower) start(ctx context.Context, fn func(context.Context)) {
	ctx, f.cancel = context.WithCancel(ctx)
	f.done = make(chan struct{})
	go func() {
		defer close(f.done)
		fn(ctx)
	}()
}

func (f *follower) stop() {
	if f.cancel != nil {
		f.cancel()
		<-f.done
		f.cancel, f.done = nil, nil
	}
}

func jitter(n int64) int64 {
	if n <= 0 {
		return 0
	}
	return rand.Int64N(n)
}

// fetchSource downloads the deployment's source archive into a file in the
// work directory and returns it open at its start.
//
// The whole archive, its checksum verified, is in hand before unpacking
// begins, so a server that restarts or a tunnel that drops in the middle
// of the stream costs a retry, not a failed deploy: what breaks off is
// fetched again, with backoff, for up to SourceRetryFor. Only the server's
// definite answers (no such deployment, not this agent's, malformed) and
// an archive over the size limit fail at once.
func (a *Agent) fetchSource(ctx context.Context, d *protocol.Deployment) (*os.File, protocol.SourceInfo, error) {
	retryFor := a.SourceRetryFor
	if retryFor <= 0 {
		retryFor = 10 * time.Minute
	}
	lim := a.Engine.cfg.SourceLimits
	// Compressed, the archive is no larger than its files plus a header
	// and padding (under 1 KiB) per entry.
	max := lim.MaxBytes + int64(lim.MaxEntries)<<10 + 1<<20
	deadline := time.Now().Add(retryFor)
	b := newBackoff()
	for {
		f, info, err := a.spoolSource(ctx, d, max)
		if err == nil {
			return f, info, nil
		}
		if ctx.Err() != nil || !retryableSource(err) || time.Now().After(deadline) {
			return nil, info, err
		}
		a.Logf("environment %s, generation %d: fetch source: %v; retrying", d.EnvironmentID, d.Generation, err)
		if !b.wait(ctx) {
			return nil, info, ctx.Err()
		}
	}
}

// errSourceTooLarge: the archive is over the limit; fetching it again
// will not help.
var errSourceTooLarge = errors.New("source archive over the size limit")

func retryableSource(err error) bool {
	return !refused(err) && !errors.Is(err, errSourceTooLarge)
}

// refused reports whether err is the server's definite answer to a call,
// which asking again would not change; anything else (a cut connection, a
// server restarting) is worth another try.
func refused(err error) bool {
	for _, definite := range []error{protocol.ErrNotFound, protocol.ErrBadRequest, protocol.ErrUnauthorized, protocol.ErrTokenUsed} {
		if errors.Is(err, definite) {
			return true
		}
	}
	return false
}

func (a *Agent) spoolSource(ctx context.Context, d *protocol.Deployment, max int64) (*os.File, protocol.SourceInfo, error) {
	src, err := a.Client.Source(ctx, protocol.SourceRequest{EnvironmentID: d.EnvironmentID, Generation: d.Generation})
	if err != nil {
		return nil, protocol.SourceInfo{}, err
	}
	defer src.Close()
	f, err := os.CreateTemp(a.Engine.cfg.WorkDir, "source-*.tar")
	if err != nil {
		return nil, src.Info, fmt.Errorf("spool source: %w", err)
	}
	// The spool lives only as this open file: nothing is left on disk once
	// it is closed, however the deploy ends, even if the agent dies.
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, src.Info, fmt.Errorf("spool source: %w", err)
	}
	fail := func(err error) (*os.File, protocol.SourceInfo, error) {
		f.Close()
		return nil, src.Info, err
	}
	n, err := io.Copy(f, io.LimitReader(src, max+1))
	switch {
	case err != nil:
		return fail(err)
	case n > max:
		return fail(fmt.Errorf("%w (%d bytes)", errSourceTooLarge, max))
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fail(fmt.Errorf("spool source: %w", err))
	}
	return f, src.Info, nil
}
