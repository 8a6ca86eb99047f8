package tunnel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/internal/slowlink"
)

// TestCongestedLinkKeepsEveryStream sends many downloads at once from the
// agent over a link far slower than the data on offer, with heartbeat
// timers shorter than the time a frame waits behind the others. The link
// is slow, not dead: no stream may be cut and the session must live.
func TestCongestedLinkKeepsEveryStream(t *testing.T) {
	const (
		streams   = 16
		perStream = 512 << 10
		chunk     = 128 << 10 // what Pipe writes at a time
		rate      = 32e6      // bits per second: 8 MiB take about 2 s
	)
	cfg := DefaultConfig()
	cfg.KeepAliveInterval = 300 * time.Millisecond
	// A frame waits behind up to 15 others of 128 KiB: about half a
	// second at this rate, well past this.
	cfg.WriteTimeout = 200 * time.Millisecond
	cfg.HandshakeTimeout = 5 * time.Second

	var ev events
	scfg := ServerConfig{Tunnel: cfg}
	ev.hooks(&scfg)
	ts := startServer(t, scfg)
	relay, err := slowlink.Start(ts.addr, 2*time.Millisecond, rate, slowlink.Options{SocketBuffer: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relay.Close() })

	payload := func(i int) []byte {
		b := make([]byte, perStream)
		r := rand.NewChaCha8([32]byte{byte(i)})
		r.Read(b)
		return b
	}
	writeErrs := make(chan error, streams)
	handler := StreamHandlerFunc(func(_ context.Context, host string, c net.Conn) {
		defer c.Close()
		var i int
		fmt.Sscanf(host, "s%d.a-wild.preview.test", &i)
		data := payload(i)
		for len(data) > 0 {
			n := min(chunk, len(data))
			if _, err := c.Write(data[:n]); err != nil {
				writeErrs <- fmt.Errorf("stream %d: write after %d bytes: %w", i, perStream-len(data), err)
				return
			}
			data = data[n:]
		}
	})
	startAgent(t, ts, "token-a", handler, func(c *AgentConfig) {
		c.Tunnel = cfg
		c.Addr = relay.Addr()
		c.TLS.ServerName = "127.0.0.1"
		c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if tc, ok := conn.(*net.TCPConn); ok {
				// Keep the queue in yamux, where a frame's wait is
				// timed, not in a kernel buffer that grows to megabytes.
				_ = tc.SetWriteBuffer(256 << 10)
			}
			return conn, err
		}
	})
	sess := waitSession(t, ts, idA.Agent, 0)

	ctx := ctxT(t, 60*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := sess.OpenPreview(ctx, fmt.Sprintf("s%d.a-wild.preview.test", i))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			got, err := io.ReadAll(c)
			if err != nil {
				errs <- fmt.Errorf("stream %d: read after %d bytes: %w", i, len(got), err)
				return
			}
			if want := payload(i); !bytes.Equal(got, want) {
				errs <- fmt.Errorf("stream %d: received %d bytes (sha256 %x), want %d (sha256 %x)",
					i, len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
			}
		}()
	}
	wg.Wait()
	close(errs)
	close(writeErrs)
	for err := range writeErrs {
		t.Error(err)
	}
	for err := range errs {
		t.Error(err)
	}
	if s, ok := ts.Lookup(idA.Agent); !ok || s != sess {
		t.Error("the session was replaced or ended during the transfer")
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if len(ev.down) > 0 {
		t.Errorf("sessions ended during the transfer: %v", ev.down)
	}
}
