package proxy

import (
	"testing"
	"time"

	"github.com/stagely-dev/stagely/internal/slowlink"
)

// startRelay stands in for a long link between an agent and the proxy.
func startRelay(b testing.TB, target string, rtt time.Duration, bitsPerSecond float64) *slowlink.Relay {
	b.Helper()
	r, err := slowlink.Start(target, rtt, bitsPerSecond, slowlink.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	return r
}
