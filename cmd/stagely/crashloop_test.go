package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"github.com/stagely-dev/stagely/agent"
	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/cmd/stagely/example"
	"github.com/stagely-dev/stagely/ghsim"
	"github.com/stagely-dev/stagely/provisioner/local"
	"github.com/stagely-dev/stagely/store"
)

// machineWatch samples the local provider's machines while a test runs
// and remembers any moment at which one environment had two. It reads the
// machines' metadata files only: the provider's List also scans every
// process of the host, too dear to do many times a second.
type machineWatch struct {
	mu      sync.Mutex
	doubles []string
	most    int
	stop    func()
}

func watchMachines(t *testing.T, dir string) *machineWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	w := &machineWatch{stop: func() { cancel(); <-done }}
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			metas, _ := filepath.Glob(filepath.Join(dir, "*", "machine.json"))
			per := map[int64][]string{}
			for _, m := range metas {
				b, err := os.ReadFile(m)
				var meta struct {
					EnvironmentID int64 `json:"environment_id"`
				}
				if err == nil && json.Unmarshal(b, &meta) == nil {
					per[meta.EnvironmentID] = append(per[meta.EnvironmentID], filepath.Base(filepath.Dir(m)))
				}
			}
			w.mu.Lock()
			w.most = max(w.most, len(metas))
			for env, ids := range per {
				if len(ids) > 1 {
					w.doubles = append(w.doubles, fmt.Sprintf("environment %d: %v", env, ids))
				}
			}
			w.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(w.stop)
	return w
}

// TestCrashesLeakNoMachine runs 20 pull request lifecycles on real parts
// (the local provider's machines, their agents, the Docker engine) while
// the server process is killed with SIGKILL at random moments and
// restarted on the same addresses. At the end every environment has
// converged, no machine, container, network or volume is left, and no
// environment ever had two machines: not at any sampled moment, and not
// in the recorded history of its machines.
func TestCrashesLeakNoMachine(t *testing.T) {
	ctx := context.Background()
	bin, err := example.Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, example.Files(bin, "hello from the base branch"))
	dataDir := loopDataDir(t)
	env := []string{
		"STAGELY_PROVIDER=local",
		"STAGELY_DATA_DIR=" + dataDir,
		"STAGELY_TUNNEL_ADDR=" + freeAddr(t),
		"STAGELY_PROXY_ADDR=" + freeAddr(t),
		"STAGELY_REAP_INTERVAL=5s",
		"STAGELY_ORPHAN_GRACE=30s",
	}
	watch := watchMachines(t, filepath.Join(dataDir, "machines"))
	t.Cleanup(func() { sweepLeftovers(t, w, filepath.Join(dataDir, "machines")) })
	child := w.childWith(4, false, env...)

	const lifecycles = 20
	var (
		mu     sync.Mutex
		prs    []int
		errs   []string
		served int
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, fmt.Sprintf(format, args...))
	}
	// Every other lifecycle waits for its preview and reads it before the
	// push, so deploys complete, and are interrupted, throughout the run.
	lifecycle := func(i int) {
		pr, err := w.sim.OpenPR(ctx, ghsim.PRSpec{Owner: owner, Repo: repoName, Head: fmt.Sprintf("crash-%d", i),
			Files: map[string]string{"backend/message.txt": fmt.Sprintf("pull request %d, first commit\n", i)}})
		if err != nil {
			fail("open #%d: %v", i, err)
			return
		}
		mu.Lock()
		prs = append(prs, pr.Number)
		mu.Unlock()
		if i%2 == 0 {
			// On a failure the lifecycle goes on all the same (push,
			// close): the end state is still checked.
			if err := servesItsPreview(ctx, w, pr.SHA, fmt.Sprintf("pull request %d, first commit", i)); err != nil {
				fail("#%d: %v\n%s\n%s", pr.Number, err, machineLogs(w, dataDir, pr.Number), diagnose(w))
			} else {
				mu.Lock()
				served++
				mu.Unlock()
			}
		}
		if _, err := w.sim.PushToPR(ctx, ghsim.PushSpec{Owner: owner, Repo: repoName, Number: pr.Number,
			Files: map[string]string{"backend/message.txt": "pushed\n"}}); err != nil {
			fail("push #%d: %v", pr.Number, err)
		}
		time.Sleep(time.Duration(rand.IntN(4000)) * time.Millisecond)
		if _, err := w.sim.ClosePR(ctx, owner, repoName, pr.Number, false, "octocat"); err != nil {
			fail("close #%d: %v", pr.Number, err)
		}
	}
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				lifecycle(i)
			}
		}()
	}
	go func() {
		for i := range lifecycles {
			jobs <- i
		}
		close(jobs)
	}()
	all := make(chan struct{})
	go func() { wg.Wait(); close(all) }()

	// Fifteen kills at random moments, 1 to 6 s apart, while the
	// lifecycles run; then the server is left alone to finish.
	const kills = 15
	restarts := 0
	for running := true; running; {
		pause := time.Duration(1000+rand.IntN(5000)) * time.Millisecond
		if restarts == kills {
			pause = time.Hour
		}
		select {
		case <-all:
			running = false
		case <-time.After(pause):
			kill(t, child)
			child = w.childWith(4, false, env...)
			restarts++
		}
		// GitHub redelivers what the dead server did not acknowledge.
		w.redeliverFailed(ctx)
	}
	t.Logf("%d restarts of the server", restarts)
	for _, e := range errs {
		t.Error(e)
	}
	if restarts < kills/2 {
		t.Errorf("only %d restarts: the lifecycles were not interrupted enough to show anything", restarts)
	}
	if served < lifecycles/2 {
		t.Errorf("%d previews served, want %d", served, lifecycles/2)
	}

	eventually(t, 4*time.Minute, func() (bool, string) {
		w.redeliverFailed(ctx)
		for _, n := range prs {
			e := w.environment(n)
			if e.IntentSeq != e.HandledSeq || e.ObservedGeneration != e.DesiredGeneration || e.ObservedState != store.ObservedDestroyed {
				return false, fmt.Sprintf("#%d not converged (%s, generation %d/%d)", n, e.ObservedState, e.ObservedGeneration, e.DesiredGeneration)
			}
		}
		return true, ""
	})
	w.checkConverged(t, prs)
	watch.stop()

	if len(watch.doubles) > 0 {
		t.Errorf("an environment had two machines at once: %v", watch.doubles)
	}
	t.Logf("at most %d machines at once", watch.most)
	prov, err := local.New(local.Config{Dir: filepath.Join(dataDir, "machines"), Command: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	if ms, err := prov.List(ctx); err != nil || len(ms) != 0 {
		t.Errorf("machines left: %v (%v)", ms, err)
	}

	// The machines' history: each attempt of an environment began only
	// after the one before it was gone.
	var rows []struct {
		EnvironmentID int64      `bun:"environment_id"`
		Attempt       int        `bun:"attempt"`
		CreatedAt     time.Time  `bun:"created_at"`
		DestroyedAt   *time.Time `bun:"destroyed_at"`
	}
	if err := w.db.NewRaw(`SELECT environment_id, attempt, created_at, destroyed_at FROM agents ORDER BY environment_id, attempt`).Scan(ctx, &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) < lifecycles/2 {
		t.Errorf("%d machines made for %d lifecycles", len(rows), lifecycles)
	}
	for i, r := range rows {
		if r.DestroyedAt == nil {
			t.Errorf("environment %d: machine attempt %d never destroyed", r.EnvironmentID, r.Attempt)
			continue
		}
		if i > 0 && rows[i-1].EnvironmentID == r.EnvironmentID && r.CreatedAt.Before(*rows[i-1].DestroyedAt) {
			t.Errorf("environment %d: attempt %d made at %s, before attempt %d was destroyed at %s",
				r.EnvironmentID, r.Attempt, r.CreatedAt, rows[i-1].Attempt, rows[i-1].DestroyedAt)
		}
	}

	dc, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	for _, n := range prs {
		project := agent.ProjectName(idString(w.environment(n).ID))
		left, err := projectLeft(ctx, dc, project)
		if err != nil {
			t.Fatal(err)
		}
		if left != "" {
			t.Errorf("#%d (%s) left %s", n, project, left)
		}
	}
}

// servesItsPreview waits for the Check Run on sha to succeed, then for its
// preview URL to serve want.
func servesItsPreview(ctx context.Context, w *world, sha, want string) error {
	// Under the race detector on a busy machine, a deploy whose source
	// download the kills keep cutting can finish minutes late: after the
	// last kill its agent may wait 30 s to redial and 30 s more to fetch.
	url, err := previewOf(ctx, w.sim, sha, 5*time.Minute)
	if err != nil {
		return err
	}
	// The proxy lives in the server process: it may be down for a restart
	// just now, and an agent whose sessions keep dying backs off up to 30 s
	// between dials. fetch retries for 10 s; allow for a few backoffs.
	for tries := 0; ; tries++ {
		if _, err = fetch(ctx, url, want); err == nil || tries == 12 {
			return err
		}
	}
}

// previewOf waits for the Check Run on sha to succeed and returns its
// preview URL.
func previewOf(ctx context.Context, sim *ghsim.Sim, sha string, within time.Duration) (string, error) {
	deadline := time.Now().Add(within)
	last := "no check run"
	for time.Now().Before(deadline) {
		all, err := sim.CheckRuns(owner, repoName, sha)
		if err != nil {
			return "", err
		}
		for _, r := range all {
			if r.Name != checks.CheckName {
				continue
			}
			last = r.Status + "/" + r.Conclusion
			if r.Status == "completed" && r.Conclusion == "success" {
				return r.DetailsURL, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("check run on %s not successful within %s: %s", sha[:7], within, last)
}

// sweepLeftovers destroys what a failed run left behind, so that one
// failure does not leave agents and containers running on the machine:
// the test's machines, and its environments' compose projects.
func sweepLeftovers(t *testing.T, w *world, dir string) {
	ctx := context.Background()
	if prov, err := local.New(local.Config{Dir: dir, Command: []string{"true"}, StopGrace: 2 * time.Second}); err == nil {
		ms, _ := prov.List(ctx)
		for _, m := range ms {
			t.Logf("destroying left-over machine %s", m.ID)
			prov.Destroy(ctx, m.ID)
		}
	}
	dc, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return
	}
	defer dc.Close()
	var ids []int64
	w.db.NewRaw("SELECT id FROM environments").Scan(ctx, &ids)
	for _, id := range ids {
		byProject := filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+agent.ProjectName(idString(id))))
		cs, _ := dc.ContainerList(ctx, container.ListOptions{All: true, Filters: byProject})
		for _, c := range cs {
			dc.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
		}
		ns, _ := dc.NetworkList(ctx, network.ListOptions{Filters: byProject})
		for _, n := range ns {
			dc.NetworkRemove(ctx, n.ID)
		}
		vs, _ := dc.VolumeList(ctx, volume.ListOptions{Filters: byProject})
		for _, v := range vs.Volumes {
			dc.VolumeRemove(ctx, v.Name, true)
		}
	}
}

// machineLogs returns the output of pull request pr's machines, for a
// failure's message.
func machineLogs(w *world, dataDir string, pr int) string {
	var id int64
	if err := w.db.NewRaw("SELECT id FROM environments WHERE pr_number = ?", pr).Scan(context.Background(), &id); err != nil {
		return err.Error()
	}
	var b strings.Builder
	dirs, _ := filepath.Glob(filepath.Join(dataDir, "machines", "*"))
	for _, d := range dirs {
		meta, _ := os.ReadFile(filepath.Join(d, "machine.json"))
		if !strings.Contains(string(meta), fmt.Sprintf(`"environment_id":%d,`, id)) {
			continue
		}
		out, _ := os.ReadFile(filepath.Join(d, "output.log"))
		fmt.Fprintf(&b, "machine %s:\n%s\n", filepath.Base(d), out)
	}
	return b.String()
}

// diagnose describes the environments, their machines and their
// containers, for a failure's message.
func diagnose(w *world) string {
	ctx := context.Background()
	var b strings.Builder
	var envs []store.Environment
	w.db.NewSelect().Model(&envs).Order("id").Scan(ctx)
	for _, e := range envs {
		fmt.Fprintf(&b, "environment %d: #%d hash %s %s/%s generation %d/%d\n", e.ID, e.PRNumber, e.Hash, e.DesiredState, e.ObservedState, e.ObservedGeneration, e.DesiredGeneration)
	}
	rows, err := w.db.QueryContext(ctx, "SELECT id, environment_id, attempt, machine_id, state, destroyed_at IS NULL FROM agents ORDER BY id")
	if err == nil {
		for rows.Next() {
			var id, env, attempt int64
			var machine, state string
			var live bool
			rows.Scan(&id, &env, &attempt, &machine, &state, &live)
			fmt.Fprintf(&b, "agent %d: environment %d attempt %d machine %s %s live=%v\n", id, env, attempt, machine, state, live)
		}
		rows.Close()
	}
	dc, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return b.String()
	}
	defer dc.Close()
	cs, _ := dc.ContainerList(ctx, container.ListOptions{All: true})
	for _, c := range cs {
		ips := []string{}
		if c.NetworkSettings != nil {
			for n, s := range c.NetworkSettings.Networks {
				ips = append(ips, n+"="+s.IPAddress)
			}
		}
		fmt.Fprintf(&b, "container %v %s %s %v\n", c.Names, c.Labels["com.docker.compose.project"], c.State, ips)
	}
	return b.String()
}
