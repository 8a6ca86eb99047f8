package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/agent"
	"github.com/stagely-dev/stagely/agent/compose"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// While generation 1's `compose up` hangs (a build stuck on a slow step),
// the pull request is closed: generation 2, a destroy, is acted on at
// once, not after the superseded build's timeout.
func TestANewerDeploymentSupersedesAStuckBuild(t *testing.T) {
	d := connect(t)
	bin := t.TempDir()
	script := filepath.Join(bin, "fake-compose")
	// A compose stand-in: `version` answers, `up` hangs, `down` succeeds.
	if err := os.WriteFile(script, []byte(`#!/bin/sh
for a in "$@"; do
  case "$a" in
    version) echo 2.30.0; exit 0;;
    up) exec sleep 3600;;
    down) exit 0;;
  esac
done
exit 0
`), 0o755); err != nil {
		t.Fatal(err)
	}
	e, err := agent.New(context.Background(), agent.Config{WorkDir: filepath.Join(t.TempDir(), "work"), Docker: d,
		Compose: compose.CLI{Command: []string{script}}})
	if err != nil {
		t.Fatal(err)
	}
	env := uniqueEnv(t, d, "supersede")
	srv := newServer()
	runAgent(t, e, srv)

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "compose.yaml"), []byte("services:\n  web:\n    image: nothing-pulled\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dep := deployment(env, 1, nil)
	dep.Previews = nil
	dep.BuildTimeout = protocol.Duration(10 * time.Minute)
	srv.publish(dep, tarball(t, dir))
	srv.waitFor(t, "generation 1's up step to start", time.Minute, func(steps []protocol.StepReport, _ []protocol.LogLine) bool {
		for _, s := range steps {
			if s.Generation == 1 && s.Name == agent.StepUp {
				return true
			}
		}
		return false
	})

	// The PR is closed.
	srv.publish(protocol.Deployment{EnvironmentID: env, Generation: 2, Action: protocol.ActionDestroy}, nil)
	srv.waitFor(t, "generation 2's destroy within 20s of being published", 20*time.Second, func(steps []protocol.StepReport, _ []protocol.LogLine) bool {
		_, ok := stepDone(steps, 2, agent.StepDown)
		return ok
	})
}
