package tunnel

import (
	"math/rand/v2"
	"time"
)

// Backoff is the agent's reconnect schedule: exponential from Min to Max,
// each delay drawn at random from its upper half so that a fleet of agents
// cut off together does not come back together; reset once a session has
// stayed up for Stable.
type Backoff struct {
	// Min is the first delay. Default 500 ms.
	Min time.Duration
	// Max caps the delay. Default 30 s.
	Max time.Duration
	// Stable is how long a session must last for the next failure to start
	// again from Min. Default 30 s.
	Stable time.Duration
}

func (b Backoff) withDefaults() Backoff {
	if b.Min <= 0 {
		b.Min = 500 * time.Millisecond
	}
	if b.Max <= 0 {
		b.Max = 30 * time.Second
	}
	if b.Max < b.Min {
		b.Max = b.Min
	}
	if b.Stable <= 0 {
		b.Stable = 30 * time.Second
	}
	return b
}

// Delay is the wait before reconnect attempt number attempt (0-based).
func (b Backoff) Delay(attempt int) time.Duration {
	b = b.withDefaults()
	d := b.Min
	for i := 0; i < attempt && d < b.Max; i++ {
		if d > b.Max/2 { // doubling would pass Max, or overflow
			d = b.Max
			break
		}
		d *= 2
	}
	if d > b.Max {
		d = b.Max
	}
	half := d / 2
	return half + rand.N(half+1)
}
