// Package provisioner creates, watches and destroys the machines that run
// preview environments. A Provider is one place machines come from: AWS
// EC2 (package provisioner/ec2), DigitalOcean (provisioner/digitalocean),
// Hetzner Cloud (provisioner/hetzner), or processes on this host for the
// demo and the end-to-end tests (provisioner/local).
//
// Every machine is born with no inbound port open: the agent on it dials
// out to the proxy, so the clouds' firewalls allow no inbound traffic at
// all. Every create carries an idempotency key, so a create retried after a
// crash, a timeout or a lost answer finds the machine it made the first time
// instead of making a second one. Every machine carries Stagely's tags, so
// the reaper can list what exists and destroy what the database has
// forgotten.
//
// This package does not decide when a machine should exist or talk to the
// agent on it: the reconciler does. It renders the cloud-init user data that
// starts the agent (RenderCloudInit), and Launch waits for a new machine to
// run and destroys it when it never does.
package provisioner

import (
	"context"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"time"
)

// Provider is one source of machines. Implementations are safe for
// concurrent use.
type Provider interface {
	// Create makes the machine for spec, or returns the one an earlier
	// Create with the same spec.Key made. It returns once the cloud has
	// accepted the machine, usually before it runs; Launch waits for that.
	Create(ctx context.Context, spec Spec) (Machine, error)
	// State reports what the machine is doing. A machine the cloud no
	// longer knows is StateMissing, not an error.
	State(ctx context.Context, id string) (State, error)
	// Destroy deletes the machine. Destroying a machine that is already
	// gone succeeds.
	Destroy(ctx context.Context, id string) error
	// List returns every machine that carries this Stagely's tags and is
	// not yet terminated, for the reaper.
	List(ctx context.Context) ([]Machine, error)
}

// Spec says what machine to create.
type Spec struct {
	// EnvironmentID is the environment the machine serves; it becomes a tag.
	EnvironmentID int64
	// Key makes Create idempotent: a second Create with the same key returns
	// the first one's machine. Derive it with Key(environment, attempt) and
	// move to the next attempt whenever the machine is destroyed: a key
	// names one machine for its whole life, and EC2 remembers a key for a
	// day after its machine is gone. A retried Create must send the same
	// spec (the same user data, and so the same bootstrap token), or EC2
	// refuses it.
	Key string
	// Size, Region and Image are the provider's own names ("t3.medium",
	// "fra1", "ubuntu-24.04"). Empty means the provider's default.
	Size, Region, Image string
	// UserData is the cloud-init document the machine boots with, usually
	// from RenderCloudInit.
	UserData string
	// Tags are extra labels for people looking at the cloud console (repo,
	// pull request). Providers shorten or drop what their cloud cannot hold;
	// Stagely's own tags always win.
	Tags map[string]string
}

// Machine is a machine a Provider made.
type Machine struct {
	// ID is the provider's handle for State and Destroy.
	ID            string
	EnvironmentID int64
	Key           string
	State         State
	// Created is when the cloud made the machine (zero if it does not say).
	// The reaper leaves young machines alone: their database record may
	// still be on its way.
	Created time.Time
}

// State is what a machine is doing, in words common to every cloud.
type State string

// The states a machine goes through. Missing is a machine the cloud does
// not know (never made, or gone long enough to be forgotten).
const (
	StatePending    State = "pending"
	StateRunning    State = "running"
	StateStopped    State = "stopped"
	StateTerminated State = "terminated"
	StateMissing    State = "missing"
)

// Gone reports whether the machine no longer exists or is on its way out.
func (s State) Gone() bool { return s == StateTerminated || s == StateMissing }

// DefaultNamespace is the tag value that marks Stagely's machines when the
// operator names no namespace.
const DefaultNamespace = "stagely"

var (
	keyPattern       = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,41}$`)
	namespacePattern = regexp.MustCompile(`^[a-z][a-z0-9-]{0,19}$`)
)

// Key is the idempotency key of an environment's attempt at a machine:
// "env42-3". It fits every cloud's rules for tags, labels, names and
// EC2's ClientToken.
func Key(environmentID, attempt int64) string {
	return fmt.Sprintf("env%d-%d", environmentID, attempt)
}

// Namespace returns ns, or DefaultNamespace when ns is empty. The namespace
// tags every machine, firewall and security group a Stagely installation
// makes, so two installations sharing one cloud account never see (or
// reap) each other's machines. It is lower-case letters, digits and dashes,
// at most 20 characters, starting with a letter.
func Namespace(ns string) (string, error) {
	if ns == "" {
		return DefaultNamespace, nil
	}
	if !namespacePattern.MatchString(ns) {
		return "", fmt.Errorf("namespace %q: want lower-case letters, digits and dashes, at most 20, starting with a letter", ns)
	}
	return ns, nil
}

// Validate reports what is wrong with s before any cloud is asked. Its
// errors wrap ErrInvalidSpec.
func (s Spec) Validate() error {
	var bad []string
	if s.EnvironmentID <= 0 {
		bad = append(bad, fmt.Sprintf("environment id %d is not positive", s.EnvironmentID))
	}
	if !keyPattern.MatchString(s.Key) {
		bad = append(bad, fmt.Sprintf("idempotency key %q: want lower-case letters, digits and dashes, at most 42", s.Key))
	}
	if s.UserData == "" {
		bad = append(bad, "no user data")
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidSpec, strings.Join(bad, "; "))
	}
	return nil
}

// CheckUserDataSize returns an error wrapping ErrInvalidSpec when the user
// data is longer than the limit bytes a cloud takes (EC2 16 KiB, Hetzner
// 32 KiB, DigitalOcean 64 KiB).
func CheckUserDataSize(userData string, limit int) error {
	if len(userData) > limit {
		return fmt.Errorf("%w: user data is %d bytes, the cloud takes at most %d", ErrInvalidSpec, len(userData), limit)
	}
	return nil
}

// Retry tunes how a provider retries a request the cloud refused for a
// passing reason, such as a rate limit: at most Attempts tries in all, the
// pause doubling from MinWait up to MaxWait, with jitter so that many
// workers do not retry in step. Zero fields take the defaults: 5 attempts,
// 1 second, 30 seconds. Tests make the waits milliseconds.
type Retry struct {
	Attempts         int
	MinWait, MaxWait time.Duration
}

// WithDefaults fills in the zero fields.
func (r Retry) WithDefaults() Retry {
	if r.Attempts <= 0 {
		r.Attempts = 5
	}
	if r.MinWait <= 0 {
		r.MinWait = time.Second
	}
	if r.MaxWait < r.MinWait {
		r.MaxWait = max(30*time.Second, r.MinWait)
	}
	return r
}

// Backoff is the pause before retry number n (0 for the first retry):
// MinWait·2ⁿ capped at MaxWait, then a random amount between half of that
// and all of it.
func (r Retry) Backoff(n int) time.Duration {
	r = r.WithDefaults()
	d := r.MaxWait
	if n < 32 && r.MinWait<<n > 0 && r.MinWait<<n < r.MaxWait {
		d = r.MinWait << n
	}
	return d/2 + rand.N(d/2+1)
}
