package agent_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/agent"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// stallLogLines is the agent's log buffer in the stall test: far fewer
// lines than a build prints.
const stallLogLines = 4

// stalledLogs is the in-memory server with a log receiver that takes no
// batch until resumed: each Logs call blocks, so the agent's log stream
// backs up to it, while steps go through. It keeps the batches as they
// arrive, and says when one reports lines dropped: the agent has then
// sent what its overflowed buffer held. (The agent polls while it
// deploys, so its next poll says nothing about its logs.)
type stalledLogs struct {
	*server
	entered     chan struct{} // closed when the first batch reaches the receiver
	enterOnce   sync.Once
	release     chan struct{}
	releaseOnce sync.Once
	flushed     chan struct{} // closed when a batch reports lines dropped
	flushedOnce sync.Once

	batchMu sync.Mutex
	batches [][]protocol.LogLine
}

func newStalledLogs() *stalledLogs {
	return &stalledLogs{server: newServer(), entered: make(chan struct{}), release: make(chan struct{}), flushed: make(chan struct{})}
}

func (s *stalledLogs) Logs(ctx context.Context, id protocol.Identity, req protocol.LogsRequest, lines []protocol.LogLine) error {
	s.enterOnce.Do(func() { close(s.entered) })
	select {
	case <-s.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.batchMu.Lock()
	s.batches = append(s.batches, append([]protocol.LogLine(nil), lines...))
	s.batchMu.Unlock()
	if len(lines) > 0 && lines[0].Dropped > 0 {
		s.flushedOnce.Do(func() { close(s.flushed) })
	}
	return s.server.Logs(ctx, id, req, lines)
}

func (s *stalledLogs) resume() { s.releaseOnce.Do(func() { close(s.release) }) }

// A server that takes no log line never holds up a deploy: the deploy
// finishes, every step reported, while the log receiver is stalled and
// the agent's small log buffer overflows; once the receiver resumes it
// hears how many lines were dropped, then the newest lines.
func TestDeployFinishesWhileTheLogReceiverIsStalledAndReportsTheDroppedLines(t *testing.T) {
	d := connect(t)
	e := newEngine(t, d)
	env := failuresEnv(t, d, "stall")
	srv := newStalledLogs()
	runAgent(t, e, srv, func(a *agent.Agent) { a.LogLines = stallLogLines })
	// Should the test end early, the receiver resumes before the agent
	// is stopped, so that a deploy stuck on its logs can end.
	t.Cleanup(srv.resume)

	dir := t.TempDir()
	nonce := make([]byte, 8)
	rand.Read(nonce)
	// A cold build cache: the build prints many more lines than the buffer holds.
	writeApp(t, dir, "hello", appOptions{nonce: hex.EncodeToString(nonce)})
	dep := deployment(env, 1, nil)
	dep.BuildTimeout = protocol.Duration(5 * time.Minute)
	srv.publish(dep, tarball(t, dir))

	srv.waitFor(t, "the deploy's end, with the log receiver stalled", 4*time.Minute, func(steps []protocol.StepReport, _ []protocol.LogLine) bool {
		for _, s := range steps {
			if s.State == protocol.StepFailed || s.Name == agent.StepHealth && s.State != protocol.StepRunning {
				return true
			}
		}
		return false
	})
	select {
	case <-srv.entered:
	case <-time.After(time.Minute):
		t.Fatal("no log line ever reached the receiver")
	}
	srv.mu.Lock()
	for _, name := range []string{agent.StepSource, agent.StepCompose, agent.StepUp, agent.StepHealth} {
		if s, _ := stepDone(srv.steps, 1, name); s.State != protocol.StepSucceeded {
			t.Errorf("step %s: %+v", name, s)
		}
	}
	if n := len(srv.lines); n != 0 {
		t.Errorf("%d log lines delivered while the receiver was stalled", n)
	}
	srv.mu.Unlock()
	if t.Failed() {
		return
	}

	srv.resume()
	select {
	case <-srv.flushed:
	case <-time.After(2 * time.Minute):
		t.Fatal("after the log receiver resumed, no batch said how many lines were dropped")
	}
	// The deploy's batches are those with build lines; the containers'
	// run lines go on a stream of their own. Every batch is what the
	// buffer held, and a marker, first, says how many lines were lost
	// before it.
	srv.batchMu.Lock()
	defer srv.batchMu.Unlock()
	var got []string
	build, dropped, markers := 0, 0, 0
	for _, b := range srv.batches {
		isBuild := false
		for _, l := range b {
			isBuild = isBuild || l.Stream == protocol.StreamBuild
			got = append(got, fmt.Sprintf("[%s] %s", l.Stream, l.Text))
		}
		got = append(got, "--")
		if !isBuild {
			continue
		}
		if len(b) > stallLogLines+1 {
			t.Errorf("a batch of %d lines from a buffer of %d", len(b), stallLogLines)
		}
		for i, l := range b {
			switch {
			case l.Dropped == 0:
				build++
			case i != 0 || l.Stream != protocol.StreamAgent || l.Text != fmt.Sprintf("%d lines dropped", l.Dropped):
				t.Errorf("marker %+v at %d of its batch", l, i)
			default:
				markers++
				dropped += l.Dropped
			}
		}
	}
	if build == 0 || dropped == 0 {
		t.Errorf("%d build lines delivered, %d reported dropped: want some of each", build, dropped)
	}
	t.Logf("%d build lines delivered, %d dropped (%d markers); the server got, batch by batch:\n%s",
		build, dropped, markers, strings.Join(got, "\n"))
}
