package tunnel

import (
	"context"
	"net"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// Forward is the usual StreamHandler: it dials the local service a
// hostname maps to and copies bytes both ways (Pipe).
type Forward struct {
	// Targets maps a hostname to host:port: an exact name first, then
	// "*.parent" for a single label under parent, then "*" for any
	// hostname the proxy granted this agent.
	Targets map[string]string
	// DialTimeout bounds the dial of a target. Default 5 s.
	DialTimeout time.Duration
	// Logger receives a line per failed dial; the zero value discards.
	Logger zerolog.Logger
}

// ServeStream dials hostname's target and pipes conn to it. When the
// target cannot be dialled it closes conn, which the proxy answers with
// 502.
func (f *Forward) ServeStream(ctx context.Context, hostname string, conn net.Conn) {
	addr, ok := f.Target(hostname)
	if !ok {
		f.Logger.Warn().Str("hostname", hostname).Msg("no target for this hostname")
		conn.Close()
		return
	}
	timeout := f.DialTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	d := net.Dialer{Timeout: timeout}
	target, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		f.Logger.Warn().Err(err).Str("hostname", hostname).Str("target", addr).Msg("could not reach the service")
		conn.Close()
		return
	}
	Pipe(conn, target)
}

// Target is the address hostname's streams go to, and whether it has one.
func (f *Forward) Target(hostname string) (string, bool) {
	if addr, ok := f.Targets[hostname]; ok {
		return addr, true
	}
	if _, parent, ok := strings.Cut(hostname, "."); ok {
		if addr, ok := f.Targets["*."+parent]; ok {
			return addr, true
		}
	}
	addr, ok := f.Targets["*"]
	return addr, ok
}
