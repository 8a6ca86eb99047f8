package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/agent"
	"github.com/stagely-dev/stagely/agent/containers"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// How many timed runs each side gets; medians are reported. The machine
// is shared and noisy, so both sides alternate run by run.
const (
	benchFirstDeploys = 5
	benchRedeploys    = 7
)

// BenchmarkDeploy measures the agent's first deploy, and its redeploy
// after a one-line change, against the same `docker compose up -d --build
// --wait` run by hand on the same app in the same run.
//
// Fairness: each side deploys its own copy of the app. For first deploys
// every copy's build starts with a fresh nonce, so both sides build from
// a cold cache; for redeploys both sides have their project up and warm,
// then take turns: change one line, redeploy. The order alternates. The
// agent's time runs from the first byte of the tarball to a passing health
// check; a warm-up deploy of each side is not counted. One JSON object is
// printed per measurement.
func BenchmarkDeploy(b *testing.B) {
	d := connect(b)
	e := newEngine(b, d)
	hand := &handSide{b: b, d: d}
	ag := &agentSide{b: b, d: d, e: e}
	sides := []benchSide{hand, ag}

	// Warm-up: one first deploy of each side, not counted.
	for _, s := range sides {
		s.first(newCopy(b))
	}

	var handFirst, agentFirst []time.Duration
	for i := 0; i < benchFirstDeploys; i++ {
		order := sides
		if i%2 == 1 {
			order = []benchSide{ag, hand}
		}
		for _, s := range order {
			t := s.first(newCopy(b))
			if s == hand {
				handFirst = append(handFirst, t)
			} else {
				agentFirst = append(agentFirst, t)
			}
		}
	}

	var handRe, agentRe []time.Duration
	for i := 0; i < benchRedeploys; i++ {
		order := sides
		if i%2 == 1 {
			order = []benchSide{ag, hand}
		}
		for _, s := range order {
			t := s.redeploy(fmt.Sprintf("message number %d", i))
			if s == hand {
				handRe = append(handRe, t)
			} else {
				agentRe = append(agentRe, t)
			}
		}
	}
	hand.down()
	ag.down()

	report(b, "agent_first_deploy", agentFirst, handFirst)
	report(b, "agent_redeploy_one_line_change", agentRe, handRe)
}

// benchSide is one way of deploying: by hand or by the agent. first
// deploys a fresh copy (and keeps it for redeploys, removing the previous
// one); redeploy changes one line of the kept copy and deploys again.
type benchSide interface {
	first(dir string) time.Duration
	redeploy(message string) time.Duration
	down()
}

func newCopy(b *testing.B) string {
	b.Helper()
	nonce := make([]byte, 6)
	rand.Read(nonce)
	dir := b.TempDir()
	writeApp(b, dir, "first message", appOptions{nonce: hex.EncodeToString(nonce)})
	return dir
}

func changeLine(b *testing.B, dir, message string) {
	b.Helper()
	if err := os.WriteFile(filepath.Join(dir, "backend", "message.txt"), []byte(message+"\n"), 0o644); err != nil {
		b.Fatal(err)
	}
}

// handSide runs docker compose in the project directory, as a developer
// would.
type handSide struct {
	b       *testing.B
	d       *containers.Docker
	dir     string
	project string
	n       int
}

func (h *handSide) first(dir string) time.Duration {
	h.down()
	h.n++
	h.dir, h.project = dir, fmt.Sprintf("bench-hand-%d-%s", h.n, filepath.Base(dir))
	project := h.project
	h.b.Cleanup(func() { h.d.RemoveAll(context.Background(), project) })
	t := h.compose("up", "-d", "--build", "--wait")
	h.check("first message")
	return t
}

func (h *handSide) redeploy(message string) time.Duration {
	changeLine(h.b, h.dir, message)
	t := h.compose("up", "-d", "--build", "--wait")
	h.check(message)
	return t
}

func (h *handSide) down() {
	if h.project != "" {
		h.compose("down", "-v", "--rmi", "local", "--remove-orphans")
		h.d.RemoveAll(context.Background(), h.project)
		h.project = ""
	}
}

func (h *handSide) compose(args ...string) time.Duration {
	h.b.Helper()
	cmd := exec.Command("docker", append([]string{"compose", "-p", h.project}, args...)...)
	cmd.Dir = h.dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		h.b.Fatalf("docker compose %v: %v\n%s", args, err, out.String())
	}
	return time.Since(start)
}

func (h *handSide) check(want string) {
	h.b.Helper()
	addr, err := h.d.Address(context.Background(), h.project, "web", 8080)
	if err != nil {
		h.b.Fatal(err)
	}
	if got := get(h.b, addr); got != "web: "+want {
		h.b.Fatalf("by hand: web answered %q, want %q", got, "web: "+want)
	}
}

// agentSide deploys through the engine, from a GitHub-style tarball made
// before the clock starts (the server's work).
type agentSide struct {
	b   *testing.B
	d   *containers.Docker
	e   *agent.Engine
	dir string
	env string
	gen int64
}

func (a *agentSide) first(dir string) time.Duration {
	a.down()
	a.dir, a.env, a.gen = dir, uniqueEnv(a.b, a.d, "bench"), 0
	return a.deploy("first message")
}

func (a *agentSide) redeploy(message string) time.Duration {
	changeLine(a.b, a.dir, message)
	return a.deploy(message)
}

func (a *agentSide) deploy(want string) time.Duration {
	a.b.Helper()
	a.gen++
	tb := tarball(a.b, a.dir)
	start := time.Now()
	res, err := a.e.Deploy(context.Background(), deployment(a.env, a.gen, nil), agent.Source{Body: bytes.NewReader(tb), StripTopLevel: true}, nil)
	took := time.Since(start)
	if err != nil {
		a.b.Fatal(err)
	}
	if got := get(a.b, res.Endpoints[0].Addr); got != "web: "+want {
		a.b.Fatalf("agent: web answered %q, want %q", got, "web: "+want)
	}
	return took
}

func (a *agentSide) down() {
	if a.env != "" {
		a.gen++
		if err := a.e.Destroy(context.Background(), protocol.Deployment{EnvironmentID: a.env, Generation: a.gen, Action: protocol.ActionDestroy}, nil); err != nil {
			a.b.Fatal(err)
		}
		a.env = ""
	}
}

func report(b *testing.B, name string, agentRuns, handRuns []time.Duration) {
	v, base := median(agentRuns), median(handRuns)
	line, _ := json.Marshal(struct {
		Name     string  `json:"name"`
		Value    float64 `json:"value"`
		Unit     string  `json:"unit"`
		Baseline float64 `json:"baseline"`
		Ratio    float64 `json:"ratio"`
	}{name, round3(v.Seconds()), "s", round3(base.Seconds()), round3(v.Seconds() / base.Seconds())})
	fmt.Println(string(line))
	b.ReportMetric(v.Seconds(), name+"_s")
	b.ReportMetric(v.Seconds()/base.Seconds(), name+"_ratio")
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }
