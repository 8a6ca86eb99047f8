package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/agent"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// server is an in-memory Stagely server for Agent.Run.
type server struct {
	mu      sync.Mutex
	desired *protocol.Deployment
	changed chan struct{}
	sources map[int64][]byte
	steps   []protocol.StepReport
	lines   []protocol.LogLine
}

func newServer() *server {
	return &server{changed: make(chan struct{}), sources: map[int64][]byte{}}
}

func (s *server) publish(d protocol.Deployment, src []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.desired = &d
	s.sources[d.Generation] = src
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *server) Exchange(context.Context, protocol.ExchangeRequest) (protocol.ExchangeResponse, error) {
	return protocol.ExchangeResponse{}, protocol.ErrUnauthorized
}

func (s *server) Authenticate(_ context.Context, token string) (protocol.Identity, error) {
	if token != "agent-token" {
		return protocol.Identity{}, protocol.ErrUnauthorized
	}
	return protocol.Identity{AgentID: "a1"}, nil
}

func (s *server) Poll(ctx context.Context, _ protocol.Identity, after int64) (*protocol.Deployment, error) {
	for {
		s.mu.Lock()
		d, changed := s.desired, s.changed
		s.mu.Unlock()
		if d != nil && d.Generation > after {
			return d, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (s *server) Source(_ context.Context, _ protocol.Identity, req protocol.SourceRequest) (protocol.SourceInfo, io.ReadCloser, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.sources[req.Generation]
	if !ok {
		return protocol.SourceInfo{}, nil, protocol.ErrNotFound
	}
	return protocol.SourceInfo{StripTopLevel: true}, io.NopCloser(bytes.NewReader(b)), nil
}

func (s *server) Step(_ context.Context, _ protocol.Identity, r protocol.StepReport) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.steps = append(s.steps, r)
	return nil
}

func (s *server) Logs(_ context.Context, _ protocol.Identity, _ protocol.LogsRequest, lines []protocol.LogLine) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lines = append(s.lines, lines...)
	return nil
}

// waitFor polls cond until it holds or the timeout passes.
func (s *server) waitFor(t *testing.T, what string, timeout time.Duration, cond func(steps []protocol.StepReport, lines []protocol.LogLine) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s.mu.Lock()
		ok := cond(s.steps, s.lines)
		s.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			s.mu.Lock()
			defer s.mu.Unlock()
			t.Fatalf("timed out waiting for %s; steps: %+v", what, s.steps)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type pipeKey struct{}

// runAgent runs an Agent deploying with e for the in-memory server h, over
// pipes, until the test ends. Each call's context on the server's side
// carries its pipe (pipeKey), so a handler can cut the connection. tweaks
// edit the Agent (and its Client) before it runs.
func runAgent(t *testing.T, e *agent.Engine, h protocol.Handler, tweaks ...func(*agent.Agent)) {
	ps := &protocol.Server{Handler: h}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	client := &protocol.Client{Token: "agent-token", Dial: func(context.Context) (io.ReadWriteCloser, error) {
		a, b := net.Pipe()
		wg.Add(1)
		go func() {
			defer wg.Done()
			ps.ServeStream(context.WithValue(ctx, pipeKey{}, b), b)
		}()
		return a, nil
	}}
	a := &agent.Agent{Engine: e, Client: client, PollWait: 2 * time.Second, Logf: t.Logf}
	for _, tweak := range tweaks {
		tweak(a)
	}
	runDone := make(chan error, 1)
	go func() { runDone <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("Run: %v", err)
		}
		wg.Wait()
	})
}

func stepDone(steps []protocol.StepReport, gen int64, name string) (protocol.StepReport, bool) {
	for _, s := range steps {
		if s.Generation == gen && s.Name == name && s.State != protocol.StepRunning {
			return s, true
		}
	}
	return protocol.StepReport{}, false
}

func TestAgentRunDeploysFromTheServerAndNeverShipsASecretUnmasked(t *testing.T) {
	d := connect(t)
	e := newEngine(t, d)
	env := uniqueEnv(t, d, "run")
	b := make([]byte, 12)
	rand.Read(b)
	secret := "sk-" + hex.EncodeToString(b)

	srv := newServer()
	runAgent(t, e, srv)

	dir := t.TempDir()
	writeApp(t, dir, "hello", appOptions{})
	dep := deployment(env, 1, protocol.Secrets{"API_KEY": secret})
	srv.publish(dep, tarball(t, dir))

	srv.waitFor(t, "the health step", 3*time.Minute, func(steps []protocol.StepReport, _ []protocol.LogLine) bool {
		_, ok := stepDone(steps, 1, agent.StepHealth)
		return ok
	})
	srv.waitFor(t, "the web container's startup line", time.Minute, func(_ []protocol.StepReport, lines []protocol.LogLine) bool {
		for _, l := range lines {
			if l.Stream == protocol.StreamRun && l.Service == "web" && strings.HasPrefix(l.Text, "web starting") {
				return true
			}
		}
		return false
	})

	srv.publish(protocol.Deployment{EnvironmentID: env, Generation: 2, Action: protocol.ActionDestroy}, nil)
	srv.waitFor(t, "the down step", 2*time.Minute, func(steps []protocol.StepReport, _ []protocol.LogLine) bool {
		_, ok := stepDone(steps, 2, agent.StepDown)
		return ok
	})

	srv.mu.Lock()
	defer srv.mu.Unlock()
	for _, name := range []string{agent.StepSource, agent.StepCompose, agent.StepUp, agent.StepHealth} {
		if s, _ := stepDone(srv.steps, 1, name); s.State != protocol.StepSucceeded {
			t.Errorf("step %s: %+v", name, s)
		}
	}
	if s, _ := stepDone(srv.steps, 2, agent.StepDown); s.State != protocol.StepSucceeded {
		t.Errorf("destroy: %+v", s)
	}
	masked, build := false, 0
	for _, l := range srv.lines {
		if strings.Contains(l.Text, secret) || strings.Contains(l.Text, secret[3:15]) {
			t.Fatalf("a log line carries the secret: %+v", l)
		}
		if l.Service == "web" && l.Text == "web starting, API_KEY=***" {
			masked = true
		}
		if l.Stream == protocol.StreamBuild {
			build++
		}
	}
	for _, s := range srv.steps {
		if strings.Contains(s.Message, secret) {
			t.Fatalf("a step report carries the secret: %+v", s)
		}
	}
	if !masked {
		t.Error(`the app's "API_KEY=***" line never arrived`)
	}
	if build == 0 {
		t.Error("no build log line arrived")
	}
}
