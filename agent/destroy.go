package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/stagely-dev/stagely/agent/compose"
	"github.com/stagely-dev/stagely/agent/logs"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// Destroy removes every container, network, volume and built image of the
// environment's project, and its files. It runs `compose down -v --rmi
// local --remove-orphans` with the files of the last deploy (when this
// machine has them), removes through the Docker API whatever Compose left,
// and fails unless the engine then shows nothing of the project.
func (e *Engine) Destroy(ctx context.Context, d protocol.Deployment, r Reporter) error {
	if r == nil {
		r = discard{}
	}
	if err := validEnv(d.EnvironmentID); err != nil {
		return err
	}
	st := e.state(d.EnvironmentID)
	st.mu.Lock()
	defer st.mu.Unlock()
	m, _ := e.masker(d.EnvironmentID)
	x := &run{e: e, d: d, r: r, m: m, p: e.paths(d.EnvironmentID), project: ProjectName(d.EnvironmentID)}
	return x.step(ctx, StepDown, x.down)
}

func (x *run) down(ctx context.Context) (string, error) {
	inv, ok := x.lastInvocation()
	if !ok {
		// Without the project's files Compose still finds its containers
		// by label; an empty model keeps it from reading any other file.
		if err := os.MkdirAll(x.p.private, 0o700); err != nil {
			return "", err
		}
		empty := filepath.Join(x.p.private, "empty.yaml")
		if err := os.WriteFile(empty, []byte("services: {}\n"), 0o600); err != nil {
			return "", err
		}
		inv = compose.Invocation{Project: x.project, Dir: x.p.private, Files: []string{empty}}
	}
	emit := func(line string) {
		x.r.Log(protocol.LogLine{Time: time.Now(), Stream: protocol.StreamBuild, Text: line})
	}
	out, errOut := logs.NewLineWriter(x.m, emit), logs.NewLineWriter(x.m, emit)
	downErr := x.e.cfg.Compose.Down(ctx, inv, out, errOut)
	out.Flush()
	errOut.Flush()

	// Whatever Compose missed (a volume of an empty model, an image it
	// did not build this time, a failed down): remove through the API.
	if err := x.e.cfg.Docker.RemoveAll(ctx, x.project); err != nil {
		return "", err
	}
	left, err := x.e.cfg.Docker.Leftovers(ctx, x.project)
	if err != nil {
		return "", err
	}
	if !left.Empty() {
		return "", fmt.Errorf("still on the engine after removal: %s (compose down: %v)", left, downErr)
	}
	if err := os.RemoveAll(x.p.dir); err != nil {
		return "", fmt.Errorf("remove %s: %w", x.p.dir, err)
	}
	if downErr != nil {
		return "removed through the Docker API after compose down failed: " + downErr.Error(), nil
	}
	return "no container, network, volume or image of the project is left", nil
}

// lastInvocation reads how the project was last run, if its files are
// still here.
func (x *run) lastInvocation() (compose.Invocation, bool) {
	b, err := os.ReadFile(x.p.invocation)
	if err != nil {
		return compose.Invocation{}, false
	}
	var inv compose.Invocation
	if json.Unmarshal(b, &inv) != nil || inv.Project != x.project {
		return compose.Invocation{}, false
	}
	for _, f := range append(append([]string{}, inv.Files...), inv.EnvFiles...) {
		if _, err := os.Stat(f); err != nil {
			return compose.Invocation{}, false
		}
	}
	return inv, true
}
