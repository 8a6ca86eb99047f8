package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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
		if d == nil {
			continue
		}
		after = d.Generation
		if a.OnDeployment != nil {
			a.OnDeployment(d)
		}
		a.apply(ctx, d, &follow)
	}
	return nil
}

// apply acts on one deployment and reports it.
func (a *Agent) apply(ctx context.Context, d *protocol.Deployment, follow *follower) {
	rep := newRemoteReporter(ctx, a.Client, d.EnvironmentID, d.Generation, a.LogLines, a.Logf)
	defer func() {
		flush, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		rep.Close(flush)
	}()

	if d.Action == protocol.ActionDestroy {
		follow.stop()
		if err := a.Engine.Destroy(ctx, *d, rep); err != nil {
			a.Logf("%v", err)
		}
		return
	}
	src, err := a.Client.Source(ctx, protocol.SourceRequest{EnvironmentID: d.EnvironmentID, Generation: d.Generation})
	if err != nil {
		now := time.Now()
		rep.Step(protocol.StepReport{EnvironmentID: d.EnvironmentID, Generation: d.Generation, Name: StepSource,
			State: protocol.StepFailed, Started: now, Finished: now, Message: "fetch source: " + err.Error()})
		a.Logf("environment %s, generation %d: fetch source: %v", d.EnvironmentID, d.Generation, err)
		return
	}
	_, err = a.Engine.Deploy(ctx, *d, Source{Body: src, StripTopLevel: src.Info.StripTopLevel}, rep)
	src.Close()
	if err != nil {
		a.Logf("%v", err)
		if errors.Is(err, ErrInvalidDeployment) {
			return
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
