package agent_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/agent"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// cutOffAfterSource is the in-memory server that becomes unreachable as
// soon as it has handed out a source, as a server that is killed and
// takes a while to come back.
type cutOffAfterSource struct {
	*server
	down *atomic.Bool
}

func (c cutOffAfterSource) Source(ctx context.Context, id protocol.Identity, req protocol.SourceRequest) (protocol.SourceInfo, io.ReadCloser, error) {
	info, body, err := c.server.Source(ctx, id, req)
	if err != nil {
		return info, body, err
	}
	all, _ := io.ReadAll(body)
	c.down.Store(true)
	return info, io.NopCloser(bytes.NewReader(all)), nil
}

// TestStepsLandAfterAServerOutageLongerThanTheLogFlush: a deploy that ends
// while the server cannot be reached still reports its steps once the
// server is back, however long it was away: the server decides on them,
// and a step lost would leave its deploy waiting for ever.
func TestStepsLandAfterAServerOutageLongerThanTheLogFlush(t *testing.T) {
	d := connect(t)
	e, err := agent.New(context.Background(), agent.Config{WorkDir: t.TempDir(), Docker: d})
	if err != nil {
		t.Fatal(err)
	}
	env := uniqueEnv(t, d, "outage")
	var down atomic.Bool
	srv := newServer()
	runAgent(t, e, cutOffAfterSource{server: srv, down: &down}, func(a *agent.Agent) {
		a.LogFlush = 100 * time.Millisecond
		dial := a.Client.Dial
		a.Client.Dial = func(ctx context.Context) (io.ReadWriteCloser, error) {
			if down.Load() {
				return nil, errors.New("dial proxy: connection refused")
			}
			return dial(ctx)
		}
	})

	// No compose file: the deploy ends at once, at the compose step,
	// while the server is away.
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/README", []byte("no compose file here\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv.publish(deployment(env, 1, nil), tarball(t, dir))
	deadline := time.Now().Add(time.Minute)
	for !down.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the agent never fetched the source")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Away for many times the log flush, then back.
	time.Sleep(2 * time.Second)
	down.Store(false)
	srv.waitFor(t, "the compose step's end, after the outage", time.Minute, func(steps []protocol.StepReport, _ []protocol.LogLine) bool {
		_, ok := stepDone(steps, 1, agent.StepCompose)
		return ok
	})
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if s, ok := stepDone(srv.steps, 1, agent.StepSource); !ok || s.State != protocol.StepSucceeded {
		t.Errorf("source step %+v (reported: %v), want succeeded", s, ok)
	}
}
