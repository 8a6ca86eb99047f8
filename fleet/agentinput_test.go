package fleet_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/agent"
	"github.com/stagely-dev/stagely/agent/protocol"
	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/fleet"
	"github.com/stagely-dev/stagely/kv"
	"github.com/stagely-dev/stagely/provisioner"
	"github.com/stagely-dev/stagely/reconciler"
	"github.com/stagely-dev/stagely/repoconfig"
	"github.com/stagely-dev/stagely/store/storetest"
)

// An agent runs the pull request's code and may be hostile. One that
// reports steps for a generation it was never handed must not decide that
// deploy: not even on a fresh machine, once its own is retired, whose
// agent never reports anything.
func TestStepsForAGenerationNeverHandedAreRefused(t *testing.T) {
	db := storetest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bus := kv.NewMemory()
	h := &fleet.Handler{DB: db, Bus: bus, Tarballs: tarballs{}, Recheck: 50 * time.Millisecond}
	envID := newEnvironment(t, db)
	runningMachine(t, db, envID, "boot")
	evil := pipeClient(ctx, h)
	tok := strings.Repeat("e", 64)
	if _, err := evil.Exchange(ctx, protocol.ExchangeRequest{BootstrapToken: "boot", AgentToken: tok}); err != nil {
		t.Fatal(err)
	}
	evil.Token = tok
	now := time.Now()
	err := evil.Step(ctx, protocol.StepReport{EnvironmentID: strconv.FormatInt(envID, 10), Generation: 7, Name: "health",
		State: protocol.StepSucceeded, Started: now, Finished: now})
	if err == nil {
		t.Errorf("a step report for generation 7, never handed to this agent, was accepted")
	}

	// The maintainer destroys the compromised machine (Destroy retires its
	// agent row) and deploys generation 7 on a fresh one, whose agent
	// never starts.
	if _, err := db.ExecContext(ctx, `UPDATE agents SET state = 'destroyed', destroyed_at = now()`); err != nil {
		t.Fatal(err)
	}
	prov := &machines{created: map[string]provisioner.Spec{}, gone: map[string]bool{}}
	d := &fleet.Deployer{
		DB: db, Bus: bus, Provider: prov, ProviderName: "test", Secret: []byte("0123456789abcdef0123456789abcdef"),
		Boot:         provisioner.CloudInit{ServerURL: "https://stagely.example", ProxyAddr: "proxy.example:7443", AgentURL: "https://stagely.example/agent", AgentSHA256: strings.Repeat("0", 64)},
		PreviewHost:  func(hash, name string, first bool) string { return hash + ".preview.example" },
		PreviewURL:   func(host string) string { return "https://" + host },
		Launch:       provisioner.Wait{Timeout: 5 * time.Second, Interval: 10 * time.Millisecond},
		AgentTimeout: time.Second, Recheck: 50 * time.Millisecond,
	}
	cfg, _ := repoconfig.Parse([]byte("version: 1\npreviews:\n  - name: web\n    service: web\n    port: 8080\n"))
	target := reconciler.Target{EnvironmentID: envID, InstallationID: 1, Owner: "o", Repo: "r", PR: 1, Hash: "abc123"}
	// The deploy waits for its agent, which never comes; what matters is
	// that it does not succeed on the other agent's word.
	dctx, stop := context.WithTimeout(ctx, 2*time.Second)
	defer stop()
	res, err := d.Deploy(dctx, reconciler.DeployRequest{Target: target, SHA: "cafe", Generation: 7, Config: cfg}, func([]checks.Step) {})
	if err == nil {
		t.Errorf("deploy of generation 7 on a fresh machine whose agent never reported succeeded, with previews %+v", res.Previews)
	}
}

// Every step report becomes a Check Run update (a GitHub API call, from
// the installation's shared rate limit) and a row: a hostile agent's
// flood must be bounded, and so must its messages.
func TestAStepReportFloodIsBounded(t *testing.T) {
	db := storetest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bus := kv.NewMemory()
	h := &fleet.Handler{DB: db, Bus: bus, Tarballs: tarballs{}, Recheck: 50 * time.Millisecond}
	const flood = 300
	agent := func(spec provisioner.Spec) {
		c, err := bootedClient(ctx, h, spec, strings.Repeat("f", 64))
		if err != nil {
			t.Error(err)
			return
		}
		var d *protocol.Deployment
		for d == nil && ctx.Err() == nil {
			d, _ = c.Poll(ctx, 0, time.Second)
		}
		for i := 0; i < flood; i++ {
			c.Step(ctx, protocol.StepReport{EnvironmentID: d.EnvironmentID, Generation: d.Generation, Name: "up",
				State: protocol.StepRunning, Started: time.Now(), Message: strings.Repeat("x", 64<<10)})
			time.Sleep(10 * time.Millisecond)
		}
		now := time.Now()
		c.Step(ctx, protocol.StepReport{EnvironmentID: d.EnvironmentID, Generation: d.Generation, Name: "health",
			State: protocol.StepSucceeded, Started: now, Finished: now})
	}
	prov := &machines{created: map[string]provisioner.Spec{}, gone: map[string]bool{}, boot: agent}
	d := &fleet.Deployer{
		DB: db, Bus: bus, Provider: prov, ProviderName: "test", Secret: []byte("0123456789abcdef0123456789abcdef"),
		Boot:         provisioner.CloudInit{ServerURL: "https://stagely.example", ProxyAddr: "proxy.example:7443", AgentURL: "https://stagely.example/agent", AgentSHA256: strings.Repeat("0", 64)},
		PreviewHost:  func(hash, name string, first bool) string { return hash + ".preview.example" },
		PreviewURL:   func(host string) string { return "https://" + host },
		Launch:       provisioner.Wait{Timeout: 5 * time.Second, Interval: 10 * time.Millisecond},
		AgentTimeout: 30 * time.Second, Recheck: 50 * time.Millisecond,
	}
	envID := newEnvironment(t, db)
	cfg, _ := repoconfig.Parse([]byte("version: 1\npreviews:\n  - name: web\n    service: web\n    port: 8080\n"))
	target := reconciler.Target{EnvironmentID: envID, InstallationID: 1, Owner: "o", Repo: "r", PR: 1, Hash: "abc123"}
	var updates atomic.Int64
	if _, err := d.Deploy(ctx, reconciler.DeployRequest{Target: target, SHA: "cafe", Generation: 1, Config: cfg},
		func([]checks.Step) { updates.Add(1) }); err != nil {
		t.Fatal(err)
	}
	var rows, bytes int64
	if err := db.NewRaw("SELECT count(*), coalesce(sum(length(message)),0) FROM deployment_steps").Scan(ctx, &rows, &bytes); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d step reports: %d Check Run updates, %d rows, %d KiB of messages stored", flood+1, updates.Load(), rows, bytes>>10)
	if updates.Load() > 20 {
		t.Errorf("%d step reports made %d Check Run updates (one GitHub API call each)", flood+1, updates.Load())
	}
	if rows > 20 || bytes > 4*16<<10 {
		t.Errorf("%d step rows (%d KiB) stored for one deployment of 4 steps", rows, bytes>>10)
	}
}

// Step names are shown in the Check Run as Stagely's own: an agent may
// report only the steps agents have, in the states they have.
func TestStepReportsNameOnlyAgentSteps(t *testing.T) {
	db := storetest.New(t)
	ctx := context.Background()
	h := &fleet.Handler{DB: db, Tarballs: tarballs{}}
	envID := newEnvironment(t, db)
	if _, err := db.ExecContext(ctx, `INSERT INTO deployments (environment_id, generation, sha, agent_spec) VALUES (?, 1, 'cafe', '{}')`, envID); err != nil {
		t.Fatal(err)
	}
	id := protocol.Identity{EnvironmentID: strconv.FormatInt(envID, 10)}
	now := time.Now()
	tests := []struct {
		name  string
		step  string
		state protocol.StepState
		ok    bool
	}{
		{"an agent step", "up", protocol.StepRunning, true},
		{"the server's own step", "Provision machine", protocol.StepSucceeded, false},
		{"markup", "up** failed.\n\n## Action required\n\n[Sign in](https://evil.example/login) **x", protocol.StepFailed, false},
		{"an unknown state", "health", "skipped", false},
	}
	for _, step := range []string{agent.StepSource, agent.StepCompose, agent.StepUp, agent.StepHealth, agent.StepDown} {
		tests = append(tests, struct {
			name  string
			step  string
			state protocol.StepState
			ok    bool
		}{"the agent's " + step, step, protocol.StepSucceeded, true})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := h.Step(ctx, id, protocol.StepReport{EnvironmentID: id.EnvironmentID, Generation: 1, Name: tt.step, State: tt.state, Started: now})
			if (err == nil) != tt.ok || err != nil && !errors.Is(err, protocol.ErrBadRequest) {
				t.Errorf("Step(%.30q, %s) = %v; want accepted: %v", tt.step, tt.state, err, tt.ok)
			}
		})
	}
}
