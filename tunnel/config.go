package tunnel

import (
	"fmt"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"
)

// Config tunes a tunnel session. Agent and proxy each have one; the zero
// value of a field means its default (DefaultConfig), so a caller sets only
// what it means to change. Every knob says what it trades.
type Config struct {
	// MaxStreamWindow is the receive window this side grants each stream,
	// in bytes. A stream moves at most one window per round trip, so the
	// yamux default of 256 KiB caps a stream at about 20 Mbit/s at 100 ms
	// RTT. It is also the most a stream can buffer here when its reader is
	// slow, so it divides MemoryBudget into the stream cap. yamux returns
	// credit only after half a window is read, so a stream moves between
	// half and a whole window per round trip. Default 16 MiB: 1 Gbit/s at
	// 50 ms RTT (measured: 0.95 of plain TCP over such a link, against
	// 0.04 with 256 KiB; see the proxy benchmarks).
	MaxStreamWindow uint32

	// MaxStreams caps the streams open at once on one session. The agent
	// applies it alone; the proxy lowers it to fit MemoryBudget. Default
	// 512.
	MaxStreams int

	// MemoryBudget bounds what one session may hold in the proxy's receive
	// buffers, in bytes: the proxy's stream cap is min(MaxStreams,
	// MemoryBudget/MaxStreamWindow), and it waits for a free slot beyond
	// it. yamux has no such bound of its own. It is the worst case (every
	// stream's client stalls while its preview keeps sending), not the
	// usual use, which is a few KiB per stream. Default 2 GiB: 128 streams
	// at the default window.
	MemoryBudget int64

	// KeepAliveInterval is how often each side pings the other; both sides
	// must use the same. A peer is declared dead when its answer is late
	// and nothing at all came from it for one and a half intervals plus
	// WriteTimeout, so a dead peer (VM gone, NAT entry expired) is noticed
	// within two and a half intervals plus WriteTimeout. Default 10 s.
	KeepAliveInterval time.Duration

	// WriteTimeout is how long a ping's answer may take before the
	// heartbeat looks at whether anything else came from the peer (see
	// KeepAliveInterval). Single writes have no timeout of their own: on a
	// slow, busy link a frame can wait behind other streams' data for
	// longer than this, and failing it would break a healthy download; a
	// dead link ends every write by ending the session. Default 5 s.
	WriteTimeout time.Duration

	// StreamOpenTimeout is how long an opened stream may wait for the
	// peer's acknowledgement before yamux closes the whole session. Our
	// accept loops never block, but the open and its acknowledgement are
	// frames like any other: on a slow, busy link they queue behind the
	// data already on its way, for as long as the link needs (PROTOCOL.md
	// section 6), and a short valve would cut every download on a healthy
	// session. Liveness is the heartbeat's job, so the default is as far
	// out of the way as a single frame's: 10 minutes.
	StreamOpenTimeout time.Duration

	// StreamCloseTimeout is how long a half-closed stream may wait for the
	// peer's close before it is reset. Default 30 s.
	StreamCloseTimeout time.Duration

	// AcceptBacklog is how many opened streams may wait for acceptance, and
	// how many of our own opens may wait for acknowledgement. Both sides
	// must agree. Our accept loops hand each stream to its own goroutine at
	// once, so a short queue never fills; every slot costs 8 bytes per
	// idle session. Default 64 (yamux's is 256).
	AcceptBacklog int

	// HandshakeTimeout bounds TLS plus hello plus answer, on both sides.
	// Default 10 s.
	HandshakeTimeout time.Duration

	// Logger receives the tunnel's logs; the zero value discards them.
	Logger zerolog.Logger
}

// DefaultConfig returns the tuned defaults described on each field.
func DefaultConfig() Config {
	return Config{
		MaxStreamWindow:    16 << 20,
		MaxStreams:         512,
		MemoryBudget:       2 << 30,
		KeepAliveInterval:  10 * time.Second,
		WriteTimeout:       5 * time.Second,
		StreamOpenTimeout:  frameQueueTimeout,
		StreamCloseTimeout: 30 * time.Second,
		AcceptBacklog:      64,
		HandshakeTimeout:   10 * time.Second,
	}
}

// withDefaults fills every zero field from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.MaxStreamWindow == 0 {
		c.MaxStreamWindow = d.MaxStreamWindow
	}
	if c.MaxStreams == 0 {
		c.MaxStreams = d.MaxStreams
	}
	if c.MemoryBudget == 0 {
		c.MemoryBudget = d.MemoryBudget
	}
	if c.KeepAliveInterval == 0 {
		c.KeepAliveInterval = d.KeepAliveInterval
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = d.WriteTimeout
	}
	if c.StreamOpenTimeout == 0 {
		c.StreamOpenTimeout = d.StreamOpenTimeout
	}
	if c.StreamCloseTimeout == 0 {
		c.StreamCloseTimeout = d.StreamCloseTimeout
	}
	if c.AcceptBacklog == 0 {
		c.AcceptBacklog = d.AcceptBacklog
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = d.HandshakeTimeout
	}
	return c
}

// Verify reports a setting that cannot work.
func (c Config) Verify() error {
	c = c.withDefaults()
	switch {
	case c.MaxStreamWindow < 256<<10:
		return fmt.Errorf("tunnel config: MaxStreamWindow %d is below yamux's minimum of 256 KiB", c.MaxStreamWindow)
	case c.MaxStreams < 1:
		return fmt.Errorf("tunnel config: MaxStreams must be positive, got %d", c.MaxStreams)
	case c.MemoryBudget < int64(c.MaxStreamWindow):
		return fmt.Errorf("tunnel config: MemoryBudget %d is less than one stream window (%d)", c.MemoryBudget, c.MaxStreamWindow)
	case c.KeepAliveInterval < 0 || c.WriteTimeout < 0 || c.StreamOpenTimeout < 0 || c.StreamCloseTimeout < 0 || c.HandshakeTimeout < 0:
		return fmt.Errorf("tunnel config: timeouts must not be negative")
	case c.AcceptBacklog < 1:
		return fmt.Errorf("tunnel config: AcceptBacklog must be positive, got %d", c.AcceptBacklog)
	}
	return nil
}

// StreamCap is the number of streams a session may hold open at once:
// MaxStreams, lowered so that every stream's full window fits MemoryBudget.
func (c Config) StreamCap() int {
	c = c.withDefaults()
	n := c.MemoryBudget / int64(c.MaxStreamWindow)
	if n > int64(c.MaxStreams) {
		n = int64(c.MaxStreams)
	}
	if n < 1 {
		n = 1
	}
	return int(n)
}

// frameQueueTimeout is yamux's ConnectionWriteTimeout: how long one frame
// (a stream's data, a window update, a FIN) may wait to be written before
// that one call fails. yamux means it as a safety valve, but on a slow link
// a frame queued behind other streams' data waits legitimately, and a
// failed window update or write breaks a stream that was fine. Liveness is
// the heartbeat's job (it closes a dead session, which ends every wait),
// so the valve is set far out of the way.
const frameQueueTimeout = 10 * time.Minute

// yamuxConfig is the yamux side of c. Keep-alive pings are sent by our own
// heartbeat (one goroutine per process on the proxy, not one per session),
// so yamux's own keep-alive goroutine is off.
func (c Config) yamuxConfig() *yamux.Config {
	c = c.withDefaults()
	return &yamux.Config{
		AcceptBacklog:          c.AcceptBacklog,
		EnableKeepAlive:        false,
		KeepAliveInterval:      c.KeepAliveInterval,
		ConnectionWriteTimeout: frameQueueTimeout,
		MaxStreamWindowSize:    c.MaxStreamWindow,
		StreamOpenTimeout:      c.StreamOpenTimeout,
		StreamCloseTimeout:     c.StreamCloseTimeout,
		Logger:                 yamuxLogger{c.Logger},
	}
}

// yamuxLogger sends yamux's log lines to zerolog at debug level: they are
// about single streams (a reset, a late frame) and the tunnel logs what
// matters to a person itself.
type yamuxLogger struct{ l zerolog.Logger }

func (y yamuxLogger) Print(v ...any)                 { y.l.Debug().Msg(fmt.Sprint(v...)) }
func (y yamuxLogger) Printf(format string, v ...any) { y.l.Debug().Msgf(format, v...) }
func (y yamuxLogger) Println(v ...any)               { y.l.Debug().Msg(fmt.Sprint(v...)) }
