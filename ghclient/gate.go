package ghclient

import (
	"context"
	"sync"
	"time"
)

// gate makes every client of one creator honour a secondary rate limit
// together. GitHub applies secondary limits to the app's traffic as a whole,
// so when one request is told to back off, the others would only be refused
// too, and each retrying on its own timer is the request storm that prolongs
// the block.
//
// The first request to see the limit starts a block and leads it: it sleeps
// for the wait and then re-sends itself as the single probe. Every other
// request parks in enter without touching the network. If the probe is
// limited again the leader extends the block with a longer wait (strikes
// double it); any other result lifts the block and releases everyone at once.
// A leader that gives up or whose context ends hands the block to one parked
// request (or to the next request to arrive), which sleeps what is left of it
// and probes in turn, so the block outlives its leader.
//
// Only wall-clock deadlines are kept (resumeAt); the waiting itself is done
// by the leader through Config.Sleep, which is what lets tests run a
// fifteen-minute block instantly and see every wait.
type gate struct {
	mu       sync.Mutex
	blocked  bool
	led      bool          // a leader is sleeping or probing
	resumeAt time.Time     // when the current wait ends, for a new leader
	wake     chan struct{} // closed when parked requests should look again
	epoch    uint64        // incremented when a block starts
	strikes  int           // consecutive limited responses, for backoff
	lastWait time.Duration
	liftedAt time.Time
	parked   int // requests waiting in enter, for tests
}

// ticket is a request's standing with the gate for one attempt.
type ticket struct {
	epoch uint64        // gate epoch when the request was let through
	lead  bool          // the request leads the current block
	wait  time.Duration // a leader sleeps this long before probing
}

func newGate() *gate {
	return &gate{wake: make(chan struct{})}
}

// enter returns when the caller may send: at once when no block is in force,
// as the new leader when a block has no leader, otherwise when the block
// lifts or passes to this caller. It returns ctx.Err() if ctx ends first.
func (g *gate) enter(ctx context.Context) (ticket, error) {
	g.mu.Lock()
	for {
		if !g.blocked {
			tk := ticket{epoch: g.epoch}
			g.mu.Unlock()
			return tk, nil
		}
		if !g.led {
			g.led = true
			tk := ticket{epoch: g.epoch, lead: true, wait: max(time.Until(g.resumeAt), 0)}
			g.mu.Unlock()
			return tk, nil
		}
		wake := g.wake
		g.parked++
		g.mu.Unlock()
		select {
		case <-wake:
			g.mu.Lock()
			g.parked--
		case <-ctx.Done():
			g.mu.Lock()
			g.parked--
			g.mu.Unlock()
			return ticket{}, ctx.Err()
		}
	}
}

// limited records a secondary-limit response to a request sent under tk,
// with base the server-stated wait, and returns how long the block lasts from
// now. If tk leads the block afterwards, its holder must sleep that long and
// then probe; otherwise it re-enters the gate.
func (g *gate) limited(tk *ticket, base time.Duration) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	switch {
	case tk.lead:
		g.strikes++
	case tk.epoch != g.epoch:
		// A block started after this request was let through; that block
		// already accounts for this response, so it neither starts another
		// nor counts as a repeat.
		if !g.blocked {
			return 0
		}
		return max(g.resumeAt.Sub(now), 0)
	default:
		// A limit soon after the previous block lifted is a repeat of it;
		// one long after starts the backoff afresh.
		if now.Sub(g.liftedAt) > g.lastWait {
			g.strikes = 0
		}
		g.strikes++
		g.blocked, g.led = true, true
		g.epoch++
		g.wake = make(chan struct{})
		tk.epoch, tk.lead = g.epoch, true
	}
	wait := secondaryWait(base, g.strikes)
	g.resumeAt = now.Add(wait)
	g.lastWait = wait
	return wait
}

// lift ends the block: the leader's probe was not limited.
func (g *gate) lift() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.blocked {
		return
	}
	g.blocked, g.led = false, false
	g.liftedAt = time.Now()
	close(g.wake)
}

// abdicate gives up leadership but keeps the block, waking parked requests
// so that one of them takes over.
func (g *gate) abdicate() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.blocked || !g.led {
		return
	}
	g.led = false
	close(g.wake)
	g.wake = make(chan struct{})
}

// waiting reports how many requests are parked, for tests.
func (g *gate) waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.parked
}
