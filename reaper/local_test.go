package reaper_test

import (
	"context"
	osexec "os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/provisioner"
	"github.com/stagely-dev/stagely/provisioner/local"
	"github.com/stagely-dev/stagely/reaper"
	"github.com/stagely-dev/stagely/store/storetest"
)

// On the local provider, where a machine is a process on this host: an
// orphaned machine's process is stopped and its record removed, while a
// machine whose create is still being recorded keeps running.
func TestOrphanedLocalMachineIsDestroyedAndOneBeingCreatedIsKept(t *testing.T) {
	db := storetest.New(t)
	ctx := context.Background()
	sleep, err := osexec.LookPath("sleep")
	if err != nil {
		t.Fatalf("the machines here are sleep processes: %v", err)
	}
	p, err := local.New(local.Config{Dir: t.TempDir(), Command: []string{sleep, "600"}, StopGrace: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	create := func(envID int64, key string) provisioner.Machine {
		t.Helper()
		ud, err := provisioner.RenderCloudInit(provisioner.CloudInit{
			EnvironmentID: envID, ServerURL: "http://127.0.0.1:8080", ProxyAddr: "127.0.0.1:7443",
			AgentURL: "http://127.0.0.1:8080/agent", AgentSHA256: strings.Repeat("0", 64), BootstrapToken: "bootstrap-token-of-" + key,
		})
		if err != nil {
			t.Fatal(err)
		}
		m, err := p.Create(ctx, provisioner.Spec{EnvironmentID: envID, Key: key, UserData: ud})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Destroy(context.Background(), m.ID) })
		return m
	}

	running := env(t, db, 1, time.Hour, 0)
	creating := create(running, agent(t, db, running, 1, "", 0)) // recorded by key; its id not yet
	gone := env(t, db, 2, time.Hour, 0)
	orphan := create(gone, agent(t, db, gone, 1, "", 0))
	exec(t, db, `DELETE FROM environments WHERE id = ?`, gone) // its records go with it

	// An hour later, both machines are past the grace.
	r := newReaper(t, reaper.Config{DB: db, Provider: p, Now: func() time.Time { return time.Now().Add(time.Hour) }})
	rep, err := r.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Orphans) != 1 || rep.Orphans[0].ID != orphan.ID {
		t.Fatalf("destroyed %v, want only %s", rep.Orphans, orphan.ID)
	}
	if st, err := p.State(ctx, orphan.ID); err != nil || !st.Gone() {
		t.Errorf("the orphan is %s, %v", st, err)
	}
	if st, err := p.State(ctx, creating.ID); err != nil || st.Gone() {
		t.Errorf("the machine being created is %s, %v", st, err)
	}
	if n := audits(t, db, reaper.ActionOrphan, gone); n != 1 {
		t.Errorf("%d audit entries for the orphan, want 1", n)
	}
}
