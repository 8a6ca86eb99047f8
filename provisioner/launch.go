package provisioner

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Wait says how long Launch waits for a new machine to run and how often
// it asks the cloud.
type Wait struct {
	// Timeout is how long a machine may take from Create to running.
	// Default 10 minutes: clouds usually take one or two, but a busy region
	// can take longer, and a machine that takes longer than this is
	// unlikely to come up at all.
	Timeout time.Duration
	// Interval is the pause between two State calls. Default 5 seconds,
	// well inside every cloud's rate limit.
	Interval time.Duration
}

func (w Wait) withDefaults() Wait {
	if w.Timeout <= 0 {
		w.Timeout = 10 * time.Minute
	}
	if w.Interval <= 0 {
		w.Interval = 5 * time.Second
	}
	return w
}

// Launch creates the machine for spec and waits until p reports it
// running. A machine that is not running within w.Timeout, or that stops or
// is terminated while starting, is destroyed before Launch returns an error
// wrapping ErrNotReady, so a machine that never came up is never left
// behind. When ctx ends first (Stagely is shutting down) the machine is left
// alone: the next Launch with the same key picks it up again.
func Launch(ctx context.Context, p Provider, spec Spec, w Wait) (Machine, error) {
	w = w.withDefaults()
	m, err := p.Create(ctx, spec)
	if err != nil {
		return Machine{}, err
	}
	waitCtx, cancel := context.WithTimeout(ctx, w.Timeout)
	defer cancel()
	tick := time.NewTicker(w.Interval)
	defer tick.Stop()
	for state := m.State; ; {
		switch {
		case state == StateRunning:
			m.State = state
			return m, nil
		case state == StateStopped || state == StateTerminated:
			return m, abandon(ctx, p, m, fmt.Sprintf("was %s before it ever ran", state))
		}
		// StateMissing is waited out like pending: EC2's reads lag its
		// writes, so a machine can be unknown for a moment after Create.
		select {
		case <-waitCtx.Done():
			if ctx.Err() != nil {
				return m, fmt.Errorf("wait for machine %s of environment %d: %w", m.ID, spec.EnvironmentID, ctx.Err())
			}
			return m, abandon(ctx, p, m, fmt.Sprintf("was still %s after %s", state, w.Timeout))
		case <-tick.C:
		}
		next, err := p.State(waitCtx, m.ID)
		switch {
		case err == nil:
			state = next
		case Retryable(err) || waitCtx.Err() != nil:
			// A rate limit while polling is no reason to give up; the
			// deadline above still bounds the wait.
		default:
			return m, fmt.Errorf("wait for machine %s of environment %d: %w", m.ID, spec.EnvironmentID, err)
		}
	}
}

// abandon destroys a machine that will not come up and says why.
func abandon(ctx context.Context, p Provider, m Machine, why string) error {
	err := fmt.Errorf("machine %s of environment %d %s: %w", m.ID, m.EnvironmentID, why, ErrNotReady)
	if derr := p.Destroy(ctx, m.ID); derr != nil {
		// The machine carries Stagely's tags, so the reaper finds it even
		// if this destroy never succeeds.
		return errors.Join(err, fmt.Errorf("destroy it: %w", derr))
	}
	return err
}
