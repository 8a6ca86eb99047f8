package agent_test

import (
	"bytes"
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/agent"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// A preview that runs for days must not fill its machine's disk with
// container logs: every container gets a bounded log unless its service
// chose its own logging, and the agent still follows what they print.
func TestDeployedContainersLogsAreBoundedUnlessTheServiceSetsItsOwn(t *testing.T) {
	ctx := context.Background()
	d := connect(t)
	e := newEngine(t, d)
	env := uniqueEnv(t, d, "logcap")
	dir := t.TempDir()
	// web sets its own logging, with a driver other than the bound's;
	// backend sets none.
	writeApp(t, dir, "hello", appOptions{extraWeb: "    logging:\n      driver: local\n      options:\n        max-size: 5m\n"})
	res, err := e.Deploy(ctx, deployment(env, 1, nil), agent.Source{Body: bytes.NewReader(tarball(t, dir)), StripTopLevel: true}, nil)
	if err != nil {
		t.Fatal(err)
	}

	want := map[string]struct {
		driver string
		opts   map[string]string
	}{
		"backend": {"json-file", map[string]string{"max-size": "10m", "max-file": "3"}},
		"web":     {"local", map[string]string{"max-size": "5m"}},
	}
	for service, w := range want {
		in, err := d.API().ContainerInspect(ctx, serviceContainer(t, res.Containers, service).ID)
		if err != nil {
			t.Fatal(err)
		}
		if lc := in.HostConfig.LogConfig; lc.Type != w.driver || !maps.Equal(lc.Config, w.opts) {
			t.Errorf("service %s logs with %s %v, want %s %v", service, lc.Type, lc.Config, w.driver, w.opts)
		}
	}

	// The agent reads both drivers' logs through the engine.
	fctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	rec := &agent.Recorder{}
	done := make(chan error, 1)
	go func() { done <- e.FollowLogs(fctx, env, rec) }()
	heard := func() map[string]bool {
		got := map[string]bool{}
		for _, l := range rec.Lines() {
			if l.Stream == protocol.StreamRun && strings.Contains(l.Text, "listening on") {
				got[l.Service] = true
			}
		}
		return got
	}
	for got := heard(); !got["web"] || !got["backend"]; got = heard() {
		if fctx.Err() != nil {
			t.Fatalf("the agent followed %v of the services' output, want web and backend; lines: %+v", got, rec.Lines())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
