// Package reconcilertest has a Deployer for tests of the GitHub side: it
// deploys nothing, and succeeds, fails or blocks as the test says. The
// real Deployer (provisioner and agent) plugs into the same interface.
package reconcilertest

import (
	"context"
	"sync"
	"time"

	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/reconciler"
)

// Deployer records every call and answers as told.
type Deployer struct {
	// Delay is how long each deploy takes.
	Delay time.Duration

	mu       sync.Mutex
	fail     map[string]*reconciler.DeployError // by SHA
	gate     chan struct{}                      // non-nil: Deploy waits for it to close
	deploys  []reconciler.DeployRequest
	destroys []reconciler.Target
	started  chan string
}

// New returns a Deployer that succeeds at once.
func New() *Deployer {
	return &Deployer{fail: map[string]*reconciler.DeployError{}, started: make(chan string, 1000)}
}

// FailSHA makes every deploy of sha fail with err.
func (d *Deployer) FailSHA(sha string, err *reconciler.DeployError) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fail[sha] = err
}

// Block makes deploys wait (after their first step) until Unblock.
func (d *Deployer) Block() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gate == nil {
		d.gate = make(chan struct{})
	}
}

// Unblock releases waiting and future deploys.
func (d *Deployer) Unblock() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gate != nil {
		close(d.gate)
		d.gate = nil
	}
}

// Started delivers the SHA of each deploy as it starts.
func (d *Deployer) Started() <-chan string { return d.started }

// Deploys returns the deploy requests so far.
func (d *Deployer) Deploys() []reconciler.DeployRequest {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]reconciler.DeployRequest(nil), d.deploys...)
}

// Destroys returns the destroy calls so far.
func (d *Deployer) Destroys() []reconciler.Target {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]reconciler.Target(nil), d.destroys...)
}

// PreviewURL is the URL a successful deploy of t reports.
func PreviewURL(t reconciler.Target) string { return "http://" + t.Hash + ".preview.localhost/" }

func (d *Deployer) Deploy(ctx context.Context, req reconciler.DeployRequest, progress func([]checks.Step)) (reconciler.DeployResult, error) {
	d.mu.Lock()
	d.deploys = append(d.deploys, req)
	gate, fail := d.gate, d.fail[req.SHA]
	d.mu.Unlock()
	now := time.Now()
	steps := []checks.Step{
		{Name: "Provision machine", State: checks.StepSucceeded, StartedAt: now, FinishedAt: now},
		{Name: "Build and start", State: checks.StepRunning, StartedAt: now},
	}
	progress(steps)
	// Signalled only once the first progress is persisted, so a test that
	// backdates the deployment after Started is not overwritten by it.
	select {
	case d.started <- req.SHA:
	default:
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return reconciler.DeployResult{}, ctx.Err()
		}
	}
	if d.Delay > 0 {
		select {
		case <-time.After(d.Delay):
		case <-ctx.Done():
			return reconciler.DeployResult{}, ctx.Err()
		}
	}
	if fail != nil {
		return reconciler.DeployResult{}, fail
	}
	now = time.Now()
	steps[1].State, steps[1].FinishedAt = checks.StepSucceeded, now
	progress(steps)
	return reconciler.DeployResult{Previews: []checks.Preview{{Name: "web", URL: PreviewURL(req.Target)}}}, nil
}

func (d *Deployer) Destroy(ctx context.Context, t reconciler.Target) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.destroys = append(d.destroys, t)
	return nil
}
