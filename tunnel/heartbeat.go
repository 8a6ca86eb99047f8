package tunnel

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// maxConcurrentPings bounds the pings in flight from one proxy.
const maxConcurrentPings = 128

// heartbeat pings every session every KeepAliveInterval from one goroutine
// for the whole proxy (yamux's own keep-alive costs a goroutine per
// session) and closes a session whose agent is found dead (alive,
// PROTOCOL.md section 6). Pings are spread over the first half of the
// interval.
func heartbeat(ctx context.Context, cfg Config, sessions func() []*Session, log zerolog.Logger) {
	tick := time.NewTicker(cfg.KeepAliveInterval)
	defer tick.Stop()
	sem := make(chan struct{}, maxConcurrentPings)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		all := sessions()
		if len(all) == 0 {
			continue
		}
		gap := cfg.KeepAliveInterval / 2 / time.Duration(len(all))
		for _, s := range all {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if !alive(s.mux, s.conn, cfg) {
					s.logger().Info().Msg("agent did not answer the heartbeat; closing its session")
					s.Close()
				}
			}()
			if gap > time.Millisecond {
				select {
				case <-time.After(gap):
				case <-ctx.Done():
					return
				}
			}
		}
	}
}

// pinger is what a heartbeat needs of a yamux session.
type pinger interface {
	Ping() (time.Duration, error)
	IsClosed() bool
}

// alive reports whether the peer answered a ping within cfg.WriteTimeout
// or, failing that, sent anything at all within quietLimit. On a link that
// is busy in our direction our ping, and so its answer, queues behind our
// own data frames, for longer than any fixed timeout when the link is
// slow; but the peer pings us on its own every keep-alive interval, over
// the direction that is not busy, so a live peer is never quiet for long.
// A ping whose answer is late is left to finish (or to end with the
// session) on its own goroutine.
func alive(p pinger, c *corkConn, cfg Config) bool {
	if p.IsClosed() {
		return true // already ending; its owner cleans up
	}
	answered := make(chan error, 1)
	go func() {
		_, err := p.Ping()
		answered <- err
	}()
	t := time.NewTimer(cfg.WriteTimeout)
	defer t.Stop()
	select {
	case err := <-answered:
		if err == nil {
			return true
		}
	case <-t.C:
	}
	return p.IsClosed() || c.quietFor() < quietLimit(cfg)
}

// quietLimit is how long a live peer can go without sending anything: the
// proxy spreads its pings over half an interval, so two pings to one agent
// can be one and a half intervals apart, and each may take a write timeout
// to arrive. Both sides must use the same keep-alive interval.
func quietLimit(cfg Config) time.Duration {
	return cfg.KeepAliveInterval*3/2 + cfg.WriteTimeout
}
