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
// session) and closes a session whose ping fails or is not answered within
// WriteTimeout (PROTOCOL.md section 6). Pings are spread over the interval.
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
				if !alive(s.mux, s.conn, cfg.WriteTimeout) {
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

// alive reports whether the peer answered a ping (yamux bounds the wait by
// Config.WriteTimeout) or, failing that, sent anything at all during the
// wait: on a busy, slow link the answer can queue behind data frames, and
// arriving data proves the peer alive just as well.
func alive(p pinger, c *corkConn, timeout time.Duration) bool {
	if p.IsClosed() {
		return true // already ending; its owner cleans up
	}
	_, err := p.Ping()
	return err == nil || p.IsClosed() || c.quietFor() < timeout
}
