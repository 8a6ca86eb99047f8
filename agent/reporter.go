package agent

import (
	"sync"

	"github.com/stagely-dev/stagely/agent/protocol"
)

// Steps of a deploy and a destroy, in order, as StepReport.Name.
const (
	StepSource  = "source"  // receive and unpack the tarball
	StepCompose = "compose" // load the compose files, apply policy, write the override
	StepUp      = "up"      // docker compose up --build --wait
	StepHealth  = "health"  // find the previews' addresses, run the health check
	StepDown    = "down"    // docker compose down, then remove what is left
)

// Reporter receives a deployment's progress. The engine calls it on the
// deploy path: implementations must not block (buffer, drop logs if they
// must, never steps).
type Reporter interface {
	Step(protocol.StepReport)
	Log(protocol.LogLine)
}

// Recorder is a Reporter that keeps everything in memory, for tests and
// for callers that report after the fact. Safe for concurrent use.
type Recorder struct {
	mu    sync.Mutex
	steps []protocol.StepReport
	lines []protocol.LogLine
}

// Step implements Reporter.
func (r *Recorder) Step(s protocol.StepReport) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.steps = append(r.steps, s)
}

// Log implements Reporter.
func (r *Recorder) Log(l protocol.LogLine) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, l)
}

// Steps returns the steps reported so far.
func (r *Recorder) Steps() []protocol.StepReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]protocol.StepReport(nil), r.steps...)
}

// Lines returns the log lines reported so far.
func (r *Recorder) Lines() []protocol.LogLine {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]protocol.LogLine(nil), r.lines...)
}

// discard is the Reporter used when a caller passes nil.
type discard struct{}

func (discard) Step(protocol.StepReport) {}
func (discard) Log(protocol.LogLine)     {}
