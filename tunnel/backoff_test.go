package tunnel

import (
	"testing"
	"time"
)

func TestBackoffGrowsWithJitterAndCaps(t *testing.T) {
	b := Backoff{}
	tests := []struct {
		attempt  int
		min, max time.Duration
	}{
		{0, 250 * time.Millisecond, 500 * time.Millisecond},
		{1, 500 * time.Millisecond, time.Second},
		{3, 2 * time.Second, 4 * time.Second},
		{6, 15 * time.Second, 30 * time.Second},
		{50, 15 * time.Second, 30 * time.Second},
	}
	for _, tt := range tests {
		seen := map[time.Duration]bool{}
		for range 200 {
			d := b.Delay(tt.attempt)
			if d < tt.min || d > tt.max {
				t.Fatalf("Delay(%d) = %v, want within [%v, %v]", tt.attempt, d, tt.min, tt.max)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Fatalf("Delay(%d) has no jitter: %d distinct values in 200", tt.attempt, len(seen))
		}
	}
}

func TestAgentReconnectsAfterProxyRestart(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	a := startAgent(t, ts, "token-a", echoHandler())
	first := waitSession(t, ts, idA.Agent, 0)
	addr := ts.addr
	ts.Close()
	// Same address, new process state: the agent must find it on its own.
	ts2 := startServerWithCA(t, ts.ca, addr, ServerConfig{})
	s := waitSession(t, ts2, idA.Agent, first.Generation())
	if _, err := a.WaitConnected(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	c, err := s.OpenPreview(ctxT(t, 5*time.Second), "a.preview.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, c); got != "a.preview.test" {
		t.Fatalf("after restart: %q", got)
	}
	c.Close()
}
