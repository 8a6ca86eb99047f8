package fleet_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/fleet"
	"github.com/stagely-dev/stagely/kv"
	"github.com/stagely-dev/stagely/provisioner"
	"github.com/stagely-dev/stagely/reconciler"
	"github.com/stagely-dev/stagely/repoconfig"
	"github.com/stagely-dev/stagely/store/storetest"
)

// cloud is a Provider with EC2's idempotency semantics: a key names one
// machine for its whole life, and Create with the key of a machine that
// is gone fails (EC2 remembers ClientTokens for a day).
type cloud struct {
	mu       sync.Mutex
	n        int
	byKey    map[string]string // key -> id
	state    map[string]provisioner.State
	keys     []string // keys Create was called with, in order
	stateErr int      // State fails this many more times with a passing error
	listErr  error    // List fails with this
	// neverRuns makes the first machine stay pending forever.
	neverRuns bool
	// lostAnswer makes the next Create make the machine and then fail, as
	// when the connection drops or the context ends after the cloud
	// accepted the request.
	lostAnswer bool
}

func newCloud() *cloud {
	return &cloud{byKey: map[string]string{}, state: map[string]provisioner.State{}}
}

func (c *cloud) Create(ctx context.Context, s provisioner.Spec) (provisioner.Machine, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.keys = append(c.keys, s.Key)
	if id, ok := c.byKey[s.Key]; ok {
		if c.state[id].Gone() {
			// Not provisioner.ErrKeySpent, on purpose: the tests here show
			// that the deployer moves on without needing that error (EC2's
			// own tests show it with it).
			return provisioner.Machine{}, fmt.Errorf("idempotency key %s belongs to instance %s, which is %s; a new machine needs a new attempt", s.Key, id, c.state[id])
		}
		return provisioner.Machine{ID: id, EnvironmentID: s.EnvironmentID, Key: s.Key, State: c.state[id]}, nil
	}
	c.n++
	id := fmt.Sprintf("m-%d", c.n)
	c.byKey[s.Key] = id
	st := provisioner.StateRunning
	if c.neverRuns && c.n == 1 {
		st = provisioner.StatePending
	}
	c.state[id] = st
	if c.lostAnswer {
		c.lostAnswer = false
		return provisioner.Machine{}, errors.New("read tcp: connection reset by peer")
	}
	return provisioner.Machine{ID: id, EnvironmentID: s.EnvironmentID, Key: s.Key, State: st}, nil
}

func (c *cloud) State(ctx context.Context, id string) (provisioner.State, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stateErr > 0 {
		c.stateErr--
		return "", &provisioner.Error{Kind: provisioner.ErrRateLimited, Code: "RequestLimitExceeded", Message: "Request limit exceeded."}
	}
	st, ok := c.state[id]
	if !ok {
		return provisioner.StateMissing, nil
	}
	return st, nil
}

func (c *cloud) Destroy(ctx context.Context, id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state[id] = provisioner.StateTerminated
	return nil
}

func (c *cloud) List(ctx context.Context) ([]provisioner.Machine, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.listErr != nil {
		return nil, c.listErr
	}
	var out []provisioner.Machine
	for key, id := range c.byKey {
		if !c.state[id].Gone() {
			out = append(out, provisioner.Machine{ID: id, Key: key, State: c.state[id]})
		}
	}
	return out, nil
}

func (c *cloud) alive() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for id, st := range c.state {
		if !st.Gone() {
			out = append(out, id)
		}
	}
	return out
}

// cloudDeployer is a Deployer on p, with a .stagely.yml and the target of
// a new environment.
func cloudDeployer(t *testing.T, p provisioner.Provider) (*fleet.Deployer, *repoconfig.Config, reconciler.Target) {
	t.Helper()
	d := &fleet.Deployer{
		DB: storetest.New(t), Bus: kv.NewMemory(), Provider: p, ProviderName: "test", Secret: []byte("0123456789abcdef0123456789abcdef"),
		Boot:         provisioner.CloudInit{ServerURL: "https://stagely.example", ProxyAddr: "proxy.example:7443", AgentURL: "https://stagely.example/agent", AgentSHA256: strings.Repeat("0", 64)},
		PreviewHost:  func(hash, name string, first bool) string { return hash + ".preview.example" },
		PreviewURL:   func(host string) string { return "https://" + host },
		Launch:       provisioner.Wait{Timeout: 200 * time.Millisecond, Interval: 10 * time.Millisecond},
		AgentTimeout: 100 * time.Millisecond, Recheck: 20 * time.Millisecond,
	}
	cfg, err := repoconfig.Parse([]byte("version: 1\npreviews:\n  - name: web\n    service: web\n    port: 8080\n"))
	if err != nil {
		t.Fatal(err)
	}
	env := newEnvironment(t, d.DB)
	return d, cfg, reconciler.Target{EnvironmentID: env, InstallationID: 1, Owner: "o", Repo: "r", PR: 1, Hash: "abc123"}
}

// deployOnce runs Deploy far enough to provision (no agent answers, so it
// ends when ctx does) and returns the provisioning error, if any.
func deployOnce(t *testing.T, d *fleet.Deployer, cfg *repoconfig.Config, target reconciler.Target, gen int64) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := d.Deploy(ctx, reconciler.DeployRequest{Target: target, SHA: "deadbeef", Generation: gen, Config: cfg}, func([]checks.Step) {})
	var de *reconciler.DeployError
	if errors.As(err, &de) && de.Step == fleet.StepProvision {
		return err
	}
	return nil
}

// A rate-limited State call on a redeploy is not a dead machine: the
// environment's live machine must not be retired (and left running,
// unrecorded) while a second one is made.
func TestAThrottledStateReadKeepsTheLiveMachine(t *testing.T) {
	c := newCloud()
	d, cfg, target := cloudDeployer(t, c)
	if err := deployOnce(t, d, cfg, target, 1); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.stateErr = 1 // one throttled DescribeInstances
	c.mu.Unlock()
	if err := deployOnce(t, d, cfg, target, 2); err != nil {
		// Failing retryably is fine: the reconciler tries again.
		var de *reconciler.DeployError
		if !errors.As(err, &de) || !de.Retryable {
			t.Fatalf("throttled redeploy: %v, want success or a retryable error", err)
		}
		if err := deployOnce(t, d, cfg, target, 2); err != nil {
			t.Fatal(err)
		}
	}
	var live, retired int
	if err := d.DB.QueryRow(`SELECT count(*) FILTER (WHERE destroyed_at IS NULL), count(*) FILTER (WHERE destroyed_at IS NOT NULL) FROM agents`).Scan(&live, &retired); err != nil {
		t.Fatal(err)
	}
	t.Logf("Create keys: %v; machines alive at the cloud: %v; agents rows live=%d retired=%d", c.keys, c.alive(), live, retired)
	if c.n != 1 {
		t.Errorf("a throttled State call made the redeploy create %d machines, want 1 (the live one reused)", c.n)
	}
	if n := len(c.alive()); n != live {
		t.Errorf("%d machines alive at the cloud but %d recorded live: a running VM was retired in the database without being destroyed", n, live)
	}
}

// After Launch gives up on a machine (and destroys it), the retry must
// use a new attempt: the key of a destroyed machine names it for life,
// and EC2 refuses to reuse it.
func TestRetryAfterAMachineTooSlowToBootUsesANewKey(t *testing.T) {
	c := newCloud()
	c.neverRuns = true
	d, cfg, target := cloudDeployer(t, c)
	err := deployOnce(t, d, cfg, target, 1)
	var de *reconciler.DeployError
	if !errors.As(err, &de) || !de.Retryable {
		t.Fatalf("first deploy: %v, want a retryable ErrNotReady", err)
	}
	t.Logf("first deploy (machine never ran): %v", err)
	for i := 0; i < 3; i++ { // the reconciler's retries, then a new push
		err = deployOnce(t, d, cfg, target, int64(2+i))
		t.Logf("retry %d: %v", i+1, err)
	}
	t.Logf("Create keys: %v", c.keys)
	if err != nil {
		t.Errorf("the environment can never get a machine again: %v", err)
	}
}

// A Destroy that cannot list the cloud must not mark a machine it could
// not find (recorded before a crash or a lost answer, id unknown) as
// destroyed: it has to fail so the reconciler retries.
func TestDestroyKeepsAnUnfoundMachineWhenListFails(t *testing.T) {
	c := newCloud()
	c.lostAnswer = true
	d, cfg, target := cloudDeployer(t, c)
	err := deployOnce(t, d, cfg, target, 1)
	t.Logf("deploy with a lost create answer: %v", err)
	var mid string
	if err := d.DB.DB.QueryRow(`SELECT machine_id FROM agents WHERE environment_id = $1`, target.EnvironmentID).Scan(&mid); err != nil || mid != "" {
		t.Fatalf("machine_id %q, %v; want the row recorded without an id", mid, err)
	}
	// The PR is closed; the cloud API is having a bad minute.
	if _, err := d.DB.Exec(`UPDATE environments SET desired_state = 'destroyed', desired_generation = 2`); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.listErr = &provisioner.Error{Kind: provisioner.ErrRateLimited, Code: "RequestLimitExceeded", Message: "Request limit exceeded."}
	c.mu.Unlock()
	derr := d.Destroy(context.Background(), target)
	var live int
	if err := d.DB.QueryRow(`SELECT count(*) FROM agents WHERE destroyed_at IS NULL`).Scan(&live); err != nil {
		t.Fatal(err)
	}
	t.Logf("Destroy = %v; machines alive at the cloud: %v; live agents rows: %d", derr, c.alive(), live)
	if derr == nil && len(c.alive()) > 0 {
		t.Errorf("Destroy succeeded and retired the record, but machine %v is still running at the cloud", c.alive())
	}
}

// The operator moves the server to another provider while previews run.
// The new provider can neither see nor destroy the old one's machines: a
// destroy or a push must say so, and keep the row, not retire it and
// leave the machine running with nothing that knows of it.
func TestAMachineOfAnotherProviderIsNeitherForgottenNorReplaced(t *testing.T) {
	old := newCloud()
	d, cfg, target := cloudDeployer(t, old)
	d.ProviderName = "hetzner"
	if err := deployOnce(t, d, cfg, target, 1); err != nil {
		t.Fatal(err)
	}
	other := newCloud()
	moved := *d
	moved.Provider, moved.ProviderName = other, "digitalocean"

	if err := deployOnce(t, &moved, cfg, target, 2); err == nil || !strings.Contains(err.Error(), "made by hetzner") {
		t.Errorf("a push after the move: %v, want an error naming the machine's provider", err)
	}
	if _, err := d.DB.Exec(`UPDATE environments SET desired_state = 'destroyed', desired_generation = 3`); err != nil {
		t.Fatal(err)
	}
	if err := moved.Destroy(context.Background(), target); err == nil || !strings.Contains(err.Error(), "--provider hetzner") {
		t.Errorf("a destroy after the move: %v, want an error saying which provider can destroy the machine", err)
	}
	var live int
	if err := d.DB.QueryRow(`SELECT count(*) FROM agents WHERE destroyed_at IS NULL`).Scan(&live); err != nil {
		t.Fatal(err)
	}
	if live != 1 || len(old.alive()) != 1 || len(other.alive()) != 0 {
		t.Errorf("after the move: %d live rows, machines at the old provider %v and at the new %v; want the old machine kept on record and none made",
			live, old.alive(), other.alive())
	}
}

// A machine that powered off (its guest shut down, its host stopped) has
// no agent to answer: the next push replaces it, and it is destroyed, not
// left billed.
func TestAStoppedMachineIsReplaced(t *testing.T) {
	c := newCloud()
	d, cfg, target := cloudDeployer(t, c)
	if err := deployOnce(t, d, cfg, target, 1); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	for id := range c.state {
		c.state[id] = provisioner.StateStopped
	}
	c.mu.Unlock()
	if err := deployOnce(t, d, cfg, target, 2); err != nil {
		t.Fatal(err)
	}
	var mid string
	if err := d.DB.QueryRow(`SELECT machine_id FROM agents WHERE destroyed_at IS NULL`).Scan(&mid); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state[mid] != provisioner.StateRunning || c.state["m-1"] != provisioner.StateTerminated {
		t.Errorf("after a push, the environment's machine is %s (%s) and the stopped one %s; want a new running machine and the stopped one destroyed",
			mid, c.state[mid], c.state["m-1"])
	}
}
