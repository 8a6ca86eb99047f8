package ec2

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/fleet"
	"github.com/stagely-dev/stagely/kv"
	"github.com/stagely-dev/stagely/provisioner"
	"github.com/stagely-dev/stagely/reconciler"
	"github.com/stagely-dev/stagely/repoconfig"
	"github.com/stagely-dev/stagely/store"
	"github.com/stagely-dev/stagely/store/storetest"
)

// On EC2, a preview whose first machine was slow to boot (Launch gave up
// and terminated it) can never be deployed again: every retry and every
// later push asks RunInstances with the same ClientToken.
func TestEnvironmentRecoversAfterAMachineTooSlowToBoot(t *testing.T) {
	f := newFakeCloud(t)
	f.SetBoot(-1) // the first instance never leaves pending
	p := newProvider(t, f, f.secret)
	db := storetest.New(t)
	d := ec2Deployer(db, p, strings.Repeat("0", 64), 300*time.Millisecond)
	deploy := deployOn(t, db)
	err := deploy(d, 1, time.Second)
	t.Logf("first deploy: %v", err)
	if err == nil {
		t.Fatal("the first machine should not have come up")
	}
	f.SetBoot(0) // EC2 is healthy again
	if err := deploy(d, 2, time.Second); err != nil {
		t.Fatalf("the next deploy: %v", err)
	}

	// The same after a crash between Launch giving up and the row being
	// retired: the row still names the spent key.
	f.SetBoot(-1)
	if _, err := db.Exec(`UPDATE agents SET state = 'destroyed', destroyed_at = now() WHERE destroyed_at IS NULL`); err != nil {
		t.Fatal(err)
	}
	if err := deploy(d, 3, time.Second); err == nil {
		t.Fatal("the third machine should not have come up")
	}
	if _, err := db.Exec(`UPDATE agents SET state = 'pending', machine_id = '', destroyed_at = NULL WHERE id = (SELECT max(id) FROM agents)`); err != nil {
		t.Fatal(err)
	}
	f.SetBoot(0)
	if err := deploy(d, 4, time.Second); err != nil {
		t.Fatalf("after a crash that left the spent key recorded, the preview gets no machine: %v", err)
	}
}

// Stagely is upgraded (a new agent binary: another URL and checksum in the
// user data) while a machine boots: the old server stops before it has
// recorded the instance. The new build must get the preview a machine,
// and leave none of the old build's running.
func TestAnUpgradeWhileAMachineBootsLeavesThePreviewAMachine(t *testing.T) {
	f := newFakeCloud(t)
	f.SetBoot(-1) // still pending when the old server stops
	p := newProvider(t, f, f.secret)
	db := storetest.New(t)
	deployer := func(agentSHA string) *fleet.Deployer { return ec2Deployer(db, p, agentSHA, 5*time.Second) }
	deploy := deployOn(t, db)
	// The old build is stopped (its context ends) while Launch waits.
	_ = deploy(deployer(strings.Repeat("a", 64)), 1, 200*time.Millisecond)
	f.SetBoot(0)
	if err := deploy(deployer(strings.Repeat("b", 64)), 1, time.Second); err != nil {
		t.Fatalf("after the upgrade the preview gets no machine: %v", err)
	}
	if n := len(f.Live()); n != 1 {
		t.Errorf("%d instances running for one preview, want 1: the old build's was left", n)
	}
}

// ec2Deployer is a Deployer on p whose machines download agentSHA's
// binary, with launch as its Launch timeout.
func ec2Deployer(db *bun.DB, p *Provider, agentSHA string, launch time.Duration) *fleet.Deployer {
	return &fleet.Deployer{
		DB: db, Bus: kv.NewMemory(), Provider: p, ProviderName: "aws", Secret: []byte("0123456789abcdef0123456789abcdef"),
		Boot: provisioner.CloudInit{ServerURL: "https://stagely.example", ProxyAddr: "proxy.example:7443",
			AgentURL: "https://stagely.example/agent/" + agentSHA + "/stagely", AgentSHA256: agentSHA},
		PreviewHost:  func(hash, name string, first bool) string { return hash + ".preview.example" },
		PreviewURL:   func(host string) string { return "https://" + host },
		Launch:       provisioner.Wait{Timeout: launch, Interval: 10 * time.Millisecond},
		AgentTimeout: 100 * time.Millisecond, Recheck: 20 * time.Millisecond,
	}
}

// deployOn records a pull request in db and returns a func that deploys
// generation gen of it with a Deployer, within the time given, and
// returns the provisioning error, if any (no agent answers, so a deploy
// that provisions ends with its context).
func deployOn(t *testing.T, db *bun.DB) func(d *fleet.Deployer, gen int64, within time.Duration) error {
	t.Helper()
	in := store.PullRequestIntent{Repo: store.RepoRef{InstallationID: 1, RepositoryID: 2, Owner: "o", Name: "r"},
		PRNumber: 1, HeadSHA: "deadbeef", Desired: store.DesiredRunning, UpdatedAt: time.Now()}
	env, _, err := store.DeliverPullRequest(context.Background(), db, store.Delivery{ID: "d1", Event: "pull_request"}, in)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := repoconfig.Parse([]byte("version: 1\npreviews:\n  - name: web\n    service: web\n    port: 8080\n"))
	if err != nil {
		t.Fatal(err)
	}
	target := reconciler.Target{EnvironmentID: env, InstallationID: 1, Owner: "o", Repo: "r", PR: 1, Hash: "abc123"}
	return func(d *fleet.Deployer, gen int64, within time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), within)
		defer cancel()
		_, err := d.Deploy(ctx, reconciler.DeployRequest{Target: target, SHA: "deadbeef", Generation: gen, Config: cfg}, func([]checks.Step) {})
		var de *reconciler.DeployError
		if errors.As(err, &de) && de.Step == fleet.StepProvision {
			return de
		}
		return nil
	}
}
