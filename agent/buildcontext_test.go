package agent_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/agent"
)

// TestEnvironmentsOnOneEngineBuildTheirOwnSources deploys two
// environments, then a same-size change to one, on one Docker engine from
// archives stamped with the same commit time: each serves its own bytes.
// Docker's context transfer takes a file of equal path, size and time for
// unchanged, so with the archive's times the second build would ship the
// first one's message.
func TestEnvironmentsOnOneEngineBuildTheirOwnSources(t *testing.T) {
	ctx := context.Background()
	d := connect(t)
	e := newEngine(t, d)
	commit := time.Date(2026, 11, 27, 3, 0, 0, 0, time.UTC)
	deploy := func(env string, gen int64, message string) string {
		t.Helper()
		dir := t.TempDir()
		writeApp(t, dir, message, appOptions{})
		res, err := e.Deploy(ctx, deployment(env, gen, nil), agent.Source{Body: bytes.NewReader(tarballAt(t, dir, commit)), StripTopLevel: true}, &agent.Recorder{})
		if err != nil {
			t.Fatal(err)
		}
		return get(t, res.Endpoints[0].Addr)
	}
	a, b := uniqueEnv(t, d, "ctxa"), uniqueEnv(t, d, "ctxb")
	for _, step := range []struct {
		env     string
		gen     int64
		message string
	}{
		{a, 1, "message of environment A"},
		{b, 1, "message of environment B"},
		{a, 2, "message of environment a"},
	} {
		if got, want := deploy(step.env, step.gen, step.message), "web: "+step.message; got != want {
			t.Errorf("%s generation %d serves %q, want %q", step.env, step.gen, got, want)
		}
	}
}
