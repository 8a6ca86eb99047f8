package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/reconciler"
	"github.com/stagely-dev/stagely/reconciler/reconcilertest"
)

// TestMain lets the test binary play a Stagely server process, so crash
// tests can SIGKILL a real process: STAGELY_E2E_CHILD=1 runs `stagely
// server` configured, like production, from STAGELY_* variables, with the
// test deployer (blocked when STAGELY_E2E_BLOCK=1).
func TestMain(m *testing.M) {
	// The local provider starts machines as `<this binary> agent`: the
	// test binary then plays the stagely command.
	if len(os.Args) > 1 && os.Args[1] == "agent" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "agent:", err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	if os.Getenv("STAGELY_E2E_CHILD") == "1" {
		d := reconcilertest.New()
		if os.Getenv("STAGELY_E2E_BLOCK") == "1" {
			d.Block()
		}
		if delay, err := time.ParseDuration(os.Getenv("STAGELY_E2E_DELAY")); err == nil {
			d.Delay = delay
		}
		var deployer reconciler.Deployer = d
		if f := os.Getenv("STAGELY_E2E_DEPLOY_LOG"); f != "" {
			deployer = &loggingDeployer{Deployer: d, file: f}
		}
		cmd := serverCommandWith(os.Stderr, serverDeps{deployer: deployer, listening: func(a string) { fmt.Println("LISTENING", a) }})
		if err := cmd.ParseAndRun(context.Background(), nil); err != nil {
			fmt.Fprintln(os.Stderr, "child server:", err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// childAt starts a server process whose deploys take delay.
func (w *world) childAt(workers int, delay string) *exec.Cmd {
	return w.childWith(workers, false, "STAGELY_E2E_DELAY="+delay)
}

// child starts a server process and points webhooks at it.
func (w *world) child(workers int, block bool) *exec.Cmd {
	return w.childWith(workers, block)
}

func (w *world) childWith(workers int, block bool, env ...string) *exec.Cmd {
	w.t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		"STAGELY_E2E_CHILD=1",
		"STAGELY_ADDR=127.0.0.1:0",
		"STAGELY_DATABASE_URL="+w.dbURL,
		"STAGELY_WEBHOOK_SECRET="+testSecret,
		"STAGELY_GITHUB_URL="+w.simURL,
		fmt.Sprintf("STAGELY_APP_ID=%d", testAppID),
		"STAGELY_APP_KEY_FILE="+w.key,
		fmt.Sprintf("STAGELY_WORKERS=%d", workers),
		"STAGELY_LEASE=2s",
		"STAGELY_POLL=200ms",
		"STAGELY_LOG_LEVEL=warn",
	)
	if block {
		cmd.Env = append(cmd.Env, "STAGELY_E2E_BLOCK=1")
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = w.logs
	out, err := cmd.StdoutPipe()
	if err != nil {
		w.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "LISTENING "); ok {
				addr <- a
			}
		}
	}()
	select {
	case a := <-addr:
		w.addr = a
		w.sim.SetWebhookURL("http://" + a + "/api/github/hook")
	case <-time.After(30 * time.Second):
		w.t.Fatalf("child server did not start; logs:\n%s", w.logs.String())
	}
	return cmd
}

// loggingDeployer appends "environment@generation/pid" to a file shared by
// every server process of a test at the start of each deploy: O_APPEND
// writes this short do not interleave.
type loggingDeployer struct {
	*reconcilertest.Deployer
	file string
}

func (l *loggingDeployer) Deploy(ctx context.Context, req reconciler.DeployRequest, progress func([]checks.Step)) (reconciler.DeployResult, error) {
	f, err := os.OpenFile(l.file, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return reconciler.DeployResult{}, err
	}
	_, err = fmt.Fprintf(f, "%d@%d/%d\n", req.EnvironmentID, req.Generation, os.Getpid())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return reconciler.DeployResult{}, err
	}
	return l.Deployer.Deploy(ctx, req, progress)
}

// redeliverFailed redelivers every delivery the server did not accept.
func (w *world) redeliverFailed(ctx context.Context) {
	for _, d := range w.sim.Deliveries() {
		if d.Status != 200 && d.Status != 202 && !w.redelivered[d.GUID] {
			if r, err := w.sim.Redeliver(ctx, d.GUID); err == nil && (r.Status == 200 || r.Status == 202) {
				w.redelivered[d.GUID] = true
			}
		}
	}
}

func kill(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Kill(); err != nil { // SIGKILL: no shutdown code runs
		t.Fatal(err)
	}
	cmd.Wait()
}

func TestKilledAfterAcknowledgingBeforeReporting(t *testing.T) {
	w := newWorld(t, nil)
	// An intake-only process acknowledges the webhook and dies before any
	// worker reports on it.
	child := w.child(0, false)
	pr := w.openPR("feature")
	kill(t, child)
	if n := len(w.runs(pr.SHA)); n != 0 {
		t.Fatalf("%d check runs before any worker ran", n)
	}
	w.serve(reconcilertest.New(), 2)
	w.completed(pr.SHA, "success", 10*time.Second)
	eventually(t, 2*time.Second, func() (bool, string) {
		s := w.sticky(pr.Number)
		return len(s) == 1 && strings.Contains(s[0].Body, "ready") || len(s) == 1 && strings.Contains(s[0].Body, ".preview.localhost"), "no sticky comment with the preview"
	})
}

func TestKilledMidDeployResumesWithoutRepeating(t *testing.T) {
	w := newWorld(t, nil)
	child := w.child(2, true)
	pr := w.openPR("feature")
	eventually(t, 10*time.Second, func() (bool, string) {
		rs := w.runs(pr.SHA)
		return len(rs) == 1 && rs[0].Status == "in_progress", "check run not in progress: " + describeRuns(rs)
	})
	kill(t, child)
	// The dead worker's lease expires; a new process takes the environment
	// over and finishes the same deployment on the same check run.
	d := reconcilertest.New()
	w.serve(d, 2)
	w.completed(pr.SHA, "success", 15*time.Second)
	if s := w.sticky(pr.Number); len(s) != 1 {
		t.Fatalf("%d sticky comments after the restart, want 1", len(s))
	}
	if n := len(d.Deploys()); n != 1 {
		t.Errorf("%d deploys after the restart, want 1", n)
	}
}
