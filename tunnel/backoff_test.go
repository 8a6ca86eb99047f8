package tunnel

import (
	"math"
	"testing"
	"time"
)

func TestBackoffGrowsWithJitterAndCaps(t *testing.T) {
	uncapped := Backoff{Min: time.Second, Max: math.MaxInt64}
	tests := []struct {
		b        Backoff
		attempt  int
		min, max time.Duration
	}{
		{Backoff{}, 0, 250 * time.Millisecond, 500 * time.Millisecond},
		{Backoff{}, 1, 500 * time.Millisecond, time.Second},
		{Backoff{}, 3, 2 * time.Second, 4 * time.Second},
		{Backoff{}, 6, 15 * time.Second, 30 * time.Second},
		{Backoff{}, 50, 15 * time.Second, 30 * time.Second},
		// A Max meant as "no cap" must not overflow into a negative delay.
		{uncapped, 62, math.MaxInt64 / 2, math.MaxInt64},
		{uncapped, 200, math.MaxInt64 / 2, math.MaxInt64},
	}
	for _, tt := range tests {
		seen := map[time.Duration]bool{}
		for range 200 {
			d := tt.b.Delay(tt.attempt)
			if d < tt.min || d > tt.max {
				t.Fatalf("%+v: Delay(%d) = %v, want within [%v, %v]", tt.b, tt.attempt, d, tt.min, tt.max)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Fatalf("%+v: Delay(%d) has no jitter: %d distinct values in 200", tt.b, tt.attempt, len(seen))
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
