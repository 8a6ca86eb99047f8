package protocol_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/agent/protocol"
)

// fakeHandler is an in-memory server side.
type fakeHandler struct {
	mu        sync.Mutex
	desired   *protocol.Deployment
	changed   chan struct{}
	source    []byte
	sourceErr error // returned by the body after source is sent
	steps     []protocol.StepReport
	lines     []protocol.LogLine
	exchanged map[string]string // bootstrap token -> agent token
}

func newFakeHandler() *fakeHandler {
	return &fakeHandler{changed: make(chan struct{}), exchanged: map[string]string{}}
}

func (h *fakeHandler) publish(d protocol.Deployment) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.desired = &d
	close(h.changed)
	h.changed = make(chan struct{})
}

func (h *fakeHandler) Exchange(_ context.Context, req protocol.ExchangeRequest) (protocol.ExchangeResponse, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if req.BootstrapToken != "boot-1" {
		return protocol.ExchangeResponse{}, fmt.Errorf("unknown bootstrap token: %w", protocol.ErrUnauthorized)
	}
	if prev, ok := h.exchanged[req.BootstrapToken]; ok && prev != req.AgentToken {
		return protocol.ExchangeResponse{}, protocol.ErrTokenUsed
	}
	h.exchanged[req.BootstrapToken] = req.AgentToken
	return protocol.ExchangeResponse{AgentID: "agent-1", EnvironmentID: "env1"}, nil
}

func (h *fakeHandler) Authenticate(_ context.Context, token string) (protocol.Identity, error) {
	switch token {
	case "good":
		return protocol.Identity{AgentID: "agent-1", EnvironmentID: "env1"}, nil
	case "broken":
		return protocol.Identity{}, errors.New("database password is hunter2")
	}
	return protocol.Identity{}, protocol.ErrUnauthorized
}

func (h *fakeHandler) Poll(ctx context.Context, _ protocol.Identity, after int64) (*protocol.Deployment, error) {
	for {
		h.mu.Lock()
		d, changed := h.desired, h.changed
		h.mu.Unlock()
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

type errAfter struct {
	r   io.Reader
	err error
}

func (e *errAfter) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF && e.err != nil {
		return n, e.err
	}
	return n, err
}

func (h *fakeHandler) Source(_ context.Context, _ protocol.Identity, req protocol.SourceRequest) (protocol.SourceInfo, io.ReadCloser, error) {
	if req.Generation != 7 {
		return protocol.SourceInfo{}, nil, protocol.ErrNotFound
	}
	return protocol.SourceInfo{StripTopLevel: true}, io.NopCloser(&errAfter{bytes.NewReader(h.source), h.sourceErr}), nil
}

func (h *fakeHandler) Step(_ context.Context, _ protocol.Identity, r protocol.StepReport) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.steps = append(h.steps, r)
	return nil
}

func (h *fakeHandler) Logs(_ context.Context, _ protocol.Identity, _ protocol.LogsRequest, lines []protocol.LogLine) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lines = append(h.lines, lines...)
	return nil
}

// pipeClient returns a client whose every call is served by srv over a
// fresh net.Pipe.
func pipeClient(t *testing.T, srv *protocol.Server, token string) *protocol.Client {
	t.Helper()
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	return &protocol.Client{Token: token, Dial: func(ctx context.Context) (io.ReadWriteCloser, error) {
		a, b := net.Pipe()
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = srv.ServeStream(context.Background(), b)
		}()
		return a, nil
	}}
}

func TestPollReturnsTheDeploymentPublishedWhileWaiting(t *testing.T) {
	h := newFakeHandler()
	c := pipeClient(t, &protocol.Server{Handler: h}, "good")
	want := protocol.Deployment{
		EnvironmentID: "env1", Generation: 3, Action: protocol.ActionDeploy, SHA: "abc",
		ComposeFiles: []string{"compose.yaml"},
		Previews:     []protocol.Preview{{Name: "web", Service: "web", Port: 8080}},
		Health:       protocol.Health{Path: "/healthz", Timeout: protocol.Duration(time.Minute), ExpectStatus: 200},
		Env:          map[string]string{"MODE": "preview"},
		Secrets:      protocol.Secrets{"API_KEY": "s3cr3t"},
		Policy:       protocol.Policy{AllowHostMounts: true},
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		h.publish(want)
	}()
	got, err := c.Poll(context.Background(), 0, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if !bytes.Equal(gb, wb) {
		t.Fatalf("got %s\nwant %s", gb, wb)
	}
}

func TestPollAnswersEmptyWhenNothingNewArrives(t *testing.T) {
	h := newFakeHandler()
	h.publish(protocol.Deployment{EnvironmentID: "env1", Generation: 2})
	c := pipeClient(t, &protocol.Server{Handler: h}, "good")
	start := time.Now()
	got, err := c.Poll(context.Background(), 2, 100*time.Millisecond)
	if err != nil || got != nil {
		t.Fatalf("Poll = %v, %v; want nil, nil", got, err)
	}
	if time.Since(start) < 100*time.Millisecond {
		t.Fatalf("poll returned after %v, before its wait", time.Since(start))
	}
}

func TestServerCapsThePollWait(t *testing.T) {
	c := pipeClient(t, &protocol.Server{Handler: newFakeHandler(), MaxWait: 50 * time.Millisecond}, "good")
	start := time.Now()
	if _, err := c.Poll(context.Background(), 0, time.Hour); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("poll held %v despite MaxWait", d)
	}
}

func TestCancelledContextEndsAPoll(t *testing.T) {
	c := pipeClient(t, &protocol.Server{Handler: newFakeHandler()}, "good")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.Poll(ctx, 0, time.Minute)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
}

// A control stream that stays open but silent (a half-open link to a
// server that died) must not hold a poll, and so the agent's loop, for
// ever: past its wait and the grace the poll ends with an error.
func TestPollOnASilentStreamEnds(t *testing.T) {
	c := &protocol.Client{Token: "t", PollGrace: 100 * time.Millisecond, Dial: func(ctx context.Context) (io.ReadWriteCloser, error) {
		a, b := net.Pipe()
		go io.Copy(io.Discard, b) // takes the request, never answers
		t.Cleanup(func() { b.Close() })
		return a, nil
	}}
	done := make(chan error, 1)
	go func() {
		_, err := c.Poll(context.Background(), 0, 200*time.Millisecond)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "no answer") {
			t.Fatalf("Poll = %v, want an error saying the stream did not answer", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Poll(wait 200 ms, grace 100 ms) still blocked after 10 s")
	}
}

func TestErrorsKeepTheirCodeAndHideInternals(t *testing.T) {
	srv := &protocol.Server{Handler: newFakeHandler()}
	tests := []struct {
		name  string
		call  func(c *protocol.Client) error
		token string
		want  error
	}{
		{"unknown agent token", func(c *protocol.Client) error {
			_, err := c.Poll(context.Background(), 0, time.Millisecond)
			return err
		}, "nope", protocol.ErrUnauthorized},
		{"handler failure", func(c *protocol.Client) error {
			_, err := c.Poll(context.Background(), 0, time.Millisecond)
			return err
		}, "broken", protocol.ErrInternal},
		{"unknown bootstrap token", func(c *protocol.Client) error {
			_, err := c.Exchange(context.Background(), protocol.ExchangeRequest{BootstrapToken: "x", AgentToken: "y"})
			return err
		}, "", protocol.ErrUnauthorized},
		{"another agent's environment", func(c *protocol.Client) error {
			return c.Step(context.Background(), protocol.StepReport{EnvironmentID: "env2", Name: "up"})
		}, "good", protocol.ErrNotFound},
		{"missing source", func(c *protocol.Client) error {
			_, err := c.Source(context.Background(), protocol.SourceRequest{EnvironmentID: "env1", Generation: 1})
			return err
		}, "good", protocol.ErrNotFound},
		{"exchange without agent token", func(c *protocol.Client) error {
			_, err := c.Exchange(context.Background(), protocol.ExchangeRequest{BootstrapToken: "boot-1"})
			return err
		}, "", protocol.ErrBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call(pipeClient(t, srv, tt.token))
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("internal error text reached the agent: %v", err)
			}
		})
	}
}

func TestExchangeIsIdempotentForTheSamePairOnly(t *testing.T) {
	c := pipeClient(t, &protocol.Server{Handler: newFakeHandler()}, "")
	req := protocol.ExchangeRequest{BootstrapToken: "boot-1", AgentToken: "tok-a"}
	for i := 0; i < 2; i++ {
		got, err := c.Exchange(context.Background(), req)
		if err != nil {
			t.Fatalf("exchange %d: %v", i, err)
		}
		if got.EnvironmentID != "env1" {
			t.Fatalf("environment = %q", got.EnvironmentID)
		}
	}
	req.AgentToken = "tok-b"
	if _, err := c.Exchange(context.Background(), req); !errors.Is(err, protocol.ErrTokenUsed) {
		t.Fatalf("err = %v, want ErrTokenUsed", err)
	}
}

func TestSourceStreamsTheTarballVerbatim(t *testing.T) {
	h := newFakeHandler()
	h.source = make([]byte, 300_000) // several data frames
	rand.Read(h.source)
	c := pipeClient(t, &protocol.Server{Handler: h}, "good")
	r, err := c.Source(context.Background(), protocol.SourceRequest{EnvironmentID: "env1", Generation: 7})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !r.Info.StripTopLevel {
		t.Fatal("header lost StripTopLevel")
	}
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, h.source) {
		t.Fatalf("got %d bytes, differing from the %d sent", len(got), len(h.source))
	}
}

func TestSourceFailsWhenTheServerCannotFinish(t *testing.T) {
	h := newFakeHandler()
	h.source = []byte("partial tarball")
	h.sourceErr = errors.New("github: connection reset")
	c := pipeClient(t, &protocol.Server{Handler: h}, "good")
	r, err := c.Source(context.Background(), protocol.SourceRequest{EnvironmentID: "env1", Generation: 7})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	_, err = io.ReadAll(r)
	if !errors.Is(err, protocol.ErrInternal) {
		t.Fatalf("err = %v, want ErrInternal", err)
	}
}

func TestSourceCutShortIsCorrupt(t *testing.T) {
	// A server that sends a header and one data frame, then hangs up.
	c := &protocol.Client{Token: "good", Dial: func(ctx context.Context) (io.ReadWriteCloser, error) {
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			var hdr [5]byte
			io.ReadFull(b, hdr[:])
			n := int(hdr[1])<<24 | int(hdr[2])<<16 | int(hdr[3])<<8 | int(hdr[4])
			io.ReadFull(b, make([]byte, n))
			b.Write([]byte{'M', 0, 0, 0, 2, '{', '}'})
			b.Write([]byte{'D', 0, 0, 0, 3, 'a', 'b', 'c'})
		}()
		return a, nil
	}}
	r, err := c.Source(context.Background(), protocol.SourceRequest{EnvironmentID: "env1", Generation: 7})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.ReadAll(r); !errors.Is(err, protocol.ErrSourceCorrupt) {
		t.Fatalf("err = %v, want ErrSourceCorrupt", err)
	}
}

func TestStepsAndLogsArriveInOrder(t *testing.T) {
	h := newFakeHandler()
	c := pipeClient(t, &protocol.Server{Handler: h}, "good")
	ctx := context.Background()
	for _, name := range []string{"source", "up"} {
		if err := c.Step(ctx, protocol.StepReport{EnvironmentID: "env1", Generation: 1, Name: name, State: protocol.StepSucceeded}); err != nil {
			t.Fatal(err)
		}
	}
	ls, err := c.Logs(ctx, protocol.LogsRequest{EnvironmentID: "env1", Generation: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := ls.Send([]protocol.LogLine{{Stream: protocol.StreamBuild, Text: fmt.Sprint("line ", i)}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ls.Close(); err != nil {
		t.Fatal(err)
	}
	if len(h.steps) != 2 || h.steps[0].Name != "source" || h.steps[1].Name != "up" {
		t.Fatalf("steps = %+v", h.steps)
	}
	if len(h.lines) != 3 || h.lines[2].Text != "line 2" {
		t.Fatalf("lines = %+v", h.lines)
	}
}

func TestSecretsNeverFormatTheirValues(t *testing.T) {
	d := protocol.Deployment{Secrets: protocol.Secrets{"API_KEY": "s3cr3t"}}
	for _, s := range []string{fmt.Sprint(d), fmt.Sprintf("%+v", d), fmt.Sprintf("%#v", d)} {
		if strings.Contains(s, "s3cr3t") {
			t.Fatalf("formatted deployment shows a secret: %s", s)
		}
	}
}

func TestDurationTravelsAsAString(t *testing.T) {
	b, err := json.Marshal(protocol.Health{Timeout: protocol.Duration(90 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"timeout":"1m30s"`) {
		t.Fatalf("encoded %s", b)
	}
	var h protocol.Health
	if err := json.Unmarshal(b, &h); err != nil || time.Duration(h.Timeout) != 90*time.Second {
		t.Fatalf("decoded %v, %v", h.Timeout, err)
	}
	if err := json.Unmarshal([]byte(`{"timeout":"soon"}`), &h); err == nil {
		t.Fatal("accepted a bad duration")
	}
}
