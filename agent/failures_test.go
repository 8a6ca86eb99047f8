package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"

	"github.com/stagely-dev/stagely/agent"
	"github.com/stagely-dev/stagely/agent/containers"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// buildFailApp builds testdata/failapp, static, for a FROM-scratch image.
func buildFailApp(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "failapp")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./testdata/failapp")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the failing app: %v\n%s", err, out)
	}
	return bin
}

// writeFailApp writes a project whose services all build ./app, the
// failing app in a FROM-scratch image, with the compose file given.
func writeFailApp(t *testing.T, dir, bin, composeFile string) {
	t.Helper()
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]struct {
		body string
		mode os.FileMode
	}{
		"compose.yaml":   {composeFile, 0o644},
		"app/Dockerfile": {"FROM scratch\nCOPY app /app\nENTRYPOINT [\"/app\"]\n", 0o644},
		"app/app":        {string(b), 0o755},
	}
	for name, f := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.body), f.mode); err != nil {
			t.Fatal(err)
		}
	}
}

// failuresEnv returns a fresh environment id (its random part keeps its
// project apart from every other test's) and, when the test ends, removes
// everything of its project, images by name too, and checks nothing is
// left.
func failuresEnv(t *testing.T, d *containers.Docker, prefix string) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	env := prefix + "-" + hex.EncodeToString(b)
	project := agent.ProjectName(env)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := d.RemoveAll(ctx, project); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		imgs, err := d.API().ImageList(ctx, image.ListOptions{})
		if err != nil {
			t.Errorf("cleanup: %v", err)
		}
		for _, i := range imgs {
			for _, tag := range i.RepoTags {
				if strings.HasPrefix(tag, project+"-") {
					if _, err := d.API().ImageRemove(ctx, i.ID, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil {
						t.Errorf("cleanup: image %s: %v", tag, err)
					}
					break
				}
			}
		}
		if left, err := d.Leftovers(ctx, project); err != nil || !left.Empty() {
			t.Errorf("cleanup: left on the engine: %s (%v)", left, err)
		}
	})
	return env
}

// failDeployment is the deployment of a failing-app project: web's port
// 8080 is the preview; compose up may take 5 minutes at most.
func failDeployment(env string, gen int64) protocol.Deployment {
	d := deployment(env, gen, nil)
	d.BuildTimeout = protocol.Duration(5 * time.Minute)
	return d
}

// A deploy whose containers fail says, at step up, which service failed
// and how: the exit code and restarts of one that exited, the service of
// one that is unhealthy.
func TestDeployFailureNamesTheFailingServiceAndHow(t *testing.T) {
	d := connect(t)
	e := newEngine(t, d)
	bin := buildFailApp(t)

	// neighbour runs fine in every case: it must not be blamed.
	const neighbour = `  neighbour:
    build: ./app
`
	// A healthcheck whose first probe comes long after the process has
	// exited makes compose wait for "healthy", so it cannot take the
	// container's first instant of "running" for success.
	const noProbeYet = `    healthcheck:
      test: ["CMD", "/app", "-exit=3"]
      interval: 1m
      retries: 3
`
	// A probe that fails at once, every half second.
	const failingProbe = `    healthcheck:
      test: ["CMD", "/app", "-exit=3"]
      interval: 500ms
      timeout: 5s
      retries: 2
`
	tests := []struct {
		name    string
		compose string
		// want are the sentences the failure must carry, with %[1]s for
		// the project name; blame are the services it may name.
		want  []string
		blame []string
	}{
		{
			name:    "process exits with code 37 at start",
			compose: "services:\n  web:\n    build: ./app\n    command: [\"-exit=37\"]\n" + noProbeYet + neighbour,
			want:    []string{"container %[1]s-web-1 (service web) exited with code 37 after 0 restarts"},
			blame:   []string{"web"},
		},
		{
			// A one-shot job that fails at every try: web waits for it to
			// complete, which it does only once its restarts have run out
			// (between tries it is "restarting", never "exited").
			name: "a job exits with code 21 at every start until its restarts run out",
			compose: "services:\n  web:\n    build: ./app\n    command: [\"-listen=:8080\"]\n" +
				"    depends_on:\n      migrate:\n        condition: service_completed_successfully\n" +
				"  migrate:\n    build: ./app\n    command: [\"-exit=21\"]\n    restart: on-failure:2\n" + neighbour,
			want:  []string{"container %[1]s-migrate-1 (service migrate) exited with code 21 after 2 restarts"},
			blame: []string{"migrate"},
		},
		{
			name:    "healthcheck never passes",
			compose: "services:\n  web:\n    build: ./app\n    command: [\"-listen=:8080\"]\n" + failingProbe + neighbour,
			want:    []string{"container %[1]s-web-1 (service web) is unhealthy"},
			blame:   []string{"web"},
		},
		{
			name: "a dependency's healthcheck never passes",
			compose: "services:\n  web:\n    build: ./app\n    command: [\"-listen=:8080\"]\n" +
				"    depends_on:\n      db:\n        condition: service_healthy\n" +
				"  db:\n    build: ./app\n" + failingProbe + neighbour,
			want:  []string{"container %[1]s-db-1 (service db) is unhealthy"},
			blame: []string{"db"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := failuresEnv(t, d, "failures")
			project := agent.ProjectName(env)
			dir := t.TempDir()
			writeFailApp(t, dir, bin, tt.compose)

			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
			defer cancel()
			rec := &agent.Recorder{}
			_, err := e.Deploy(ctx, failDeployment(env, 1), agent.Source{Body: bytes.NewReader(tarball(t, dir)), StripTopLevel: true}, rec)
			if err == nil {
				t.Fatal("the deploy succeeded")
			}
			var se *agent.StepError
			if !errors.As(err, &se) || se.Step != agent.StepUp || se.Environment != env {
				t.Fatalf("err = %v, want a failure of step %s of %s", err, agent.StepUp, env)
			}
			if ctx.Err() != nil {
				t.Fatalf("the deploy ran out of time: %v", err)
			}
			assertStepsSucceeded(t, rec, agent.StepSource, agent.StepCompose)
			var failed []protocol.StepReport
			for _, s := range rec.Steps() {
				switch {
				case s.Name == agent.StepHealth:
					t.Errorf("step %s ran after step %s failed: %+v", s.Name, agent.StepUp, s)
				case s.State == protocol.StepFailed:
					failed = append(failed, s)
				}
			}
			if len(failed) != 1 || failed[0].Name != agent.StepUp {
				t.Fatalf("failed steps: %+v, want step %s alone", failed, agent.StepUp)
			}
			for _, w := range tt.want {
				w = fmt.Sprintf(w, project)
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
				if !strings.Contains(failed[0].Message, w) {
					t.Errorf("reported step does not say %q:\n%s", w, failed[0].Message)
				}
			}
			// Only the failing service is blamed.
			for _, service := range []string{"web", "db", "migrate", "neighbour"} {
				blamed := false
				for _, b := range tt.blame {
					blamed = blamed || b == service
				}
				if s := "(service " + service + ")"; !blamed && strings.Contains(err.Error(), s) {
					t.Errorf("the error blames %s, which did not fail:\n%v", service, err)
				}
			}
		})
	}
}

// A container that dies after a successful deploy is reported to the
// server, on the run stream of that deployment, with its exit code.
func TestAgentReportsAContainerThatDiesAfterTheDeploy(t *testing.T) {
	d := connect(t)
	bin := buildFailApp(t)
	const composeFile = `services:
  web:
    build: ./app
    command: ["-listen=:8080", "-usr1-exit=42"]
  sentinel:
    build: ./app
`
	tests := []struct {
		name   string
		signal string
		code   int
	}{
		{name: "killed", signal: "KILL", code: 137},
		{name: "exits on its own with code 42", signal: "USR1", code: 42},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEngine(t, d)
			env := failuresEnv(t, d, "death")
			project := agent.ProjectName(env)
			srv := newServer()
			runAgent(t, e, srv) // stopped before failuresEnv cleans up
			dir := t.TempDir()
			writeFailApp(t, dir, bin, composeFile)
			srv.publish(failDeployment(env, 1), tarball(t, dir))

			srv.waitFor(t, "the health step", 5*time.Minute, func(steps []protocol.StepReport, _ []protocol.LogLine) bool {
				_, ok := stepDone(steps, 1, agent.StepHealth)
				return ok
			})
			srv.mu.Lock()
			for _, name := range []string{agent.StepSource, agent.StepCompose, agent.StepUp, agent.StepHealth} {
				if s, _ := stepDone(srv.steps, 1, name); s.State != protocol.StepSucceeded {
					t.Errorf("step %s: %+v", name, s)
				}
			}
			srv.mu.Unlock()
			if t.Failed() {
				return
			}

			// The agent follows the containers once the deploy is over; a
			// death before it watches would go unseen. Restart the
			// sentinel until its restart is reported: from then on the
			// agent is watching.
			sentinel := project + "-sentinel-1"
			deadline := time.Now().Add(2 * time.Minute)
			for watching := false; !watching; {
				if time.Now().After(deadline) {
					t.Fatal("the restarts of the sentinel were never reported: the agent does not follow the containers")
				}
				stop := 1
				if err := d.API().ContainerRestart(ctx, sentinel, container.StopOptions{Timeout: &stop}); err != nil {
					t.Fatal(err)
				}
				watching = failuresWaitLine(srv, 10*time.Second, func(l protocol.LogLine) bool {
					return l.Stream == protocol.StreamAgent && l.Text == "container "+sentinel+": restarted"
				})
			}

			web := project + "-web-1"
			if err := d.API().ContainerKill(ctx, web, tt.signal); err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf("container %s exited with code %d", web, tt.code)
			if !failuresWaitLine(srv, 2*time.Minute, func(l protocol.LogLine) bool {
				return l.Stream == protocol.StreamAgent && l.Service == "web" && l.Text == want
			}) {
				srv.mu.Lock()
				defer srv.mu.Unlock()
				var agentLines []string
				for _, l := range srv.lines {
					if l.Stream == protocol.StreamAgent {
						agentLines = append(agentLines, fmt.Sprintf("%s: %s", l.Service, l.Text))
					}
				}
				t.Fatalf("the server never heard %q; agent lines:\n%s", want, strings.Join(agentLines, "\n"))
			}
			in, err := d.API().ContainerInspect(ctx, web)
			if err != nil {
				t.Fatal(err)
			}
			if in.State.Running || in.State.ExitCode != tt.code {
				t.Fatalf("web: running %v, exit code %d; want it dead with %d", in.State.Running, in.State.ExitCode, tt.code)
			}
		})
	}
}

// failuresWaitLine reports whether the server receives a log line for
// which match holds within timeout.
func failuresWaitLine(s *server, timeout time.Duration, match func(protocol.LogLine) bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		s.mu.Lock()
		for _, l := range s.lines {
			if match(l) {
				s.mu.Unlock()
				return true
			}
		}
		s.mu.Unlock()
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
