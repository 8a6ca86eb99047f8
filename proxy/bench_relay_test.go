package proxy

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// delayRelay stands in for a long link between an agent and the proxy
// (this kernel has no netem): it forwards TCP connections to target,
// holding every chunk for half the round-trip time in each direction and
// pacing each direction to rate bytes per second. What a direction holds
// is bounded by what the link itself would: rate × one-way delay (the
// bytes "on the wire"), so the sender feels the link's back-pressure.
type delayRelay struct {
	ln     net.Listener
	target string
	oneWay time.Duration
	rate   float64 // bytes per second
}

func startRelay(b testing.TB, target string, rtt time.Duration, bitsPerSecond float64) *delayRelay {
	b.Helper()
	r := &delayRelay{ln: listen(b), target: target, oneWay: rtt / 2, rate: bitsPerSecond / 8}
	go r.serve()
	b.Cleanup(func() { r.ln.Close() })
	return r
}

func (r *delayRelay) addr() string { return r.ln.Addr().String() }

func (r *delayRelay) serve() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			t, err := net.Dial("tcp", r.target)
			if err != nil {
				c.Close()
				return
			}
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); r.pump(t, c) }()
			go func() { defer wg.Done(); r.pump(c, t) }()
			wg.Wait()
			c.Close()
			t.Close()
		}()
	}
}

type chunk struct {
	data []byte
	due  time.Time
}

// pump moves src to dst through a delay line of capacity rate × oneWay.
func (r *delayRelay) pump(dst, src net.Conn) {
	capacity := int(r.rate * r.oneWay.Seconds())
	var (
		mu     sync.Mutex
		cond   = sync.NewCond(&mu)
		queue  []chunk
		held   int
		closed bool
	)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				data := make([]byte, n)
				copy(data, buf[:n])
				mu.Lock()
				for held+n > capacity && held > 0 {
					cond.Wait()
				}
				queue = append(queue, chunk{data, time.Now().Add(r.oneWay)})
				held += n
				cond.Broadcast()
				mu.Unlock()
			}
			if err != nil {
				mu.Lock()
				closed = true
				cond.Broadcast()
				mu.Unlock()
				return
			}
		}
	}()
	next := time.Now() // when the link is free to send again
	for {
		mu.Lock()
		for len(queue) == 0 && !closed {
			cond.Wait()
		}
		if len(queue) == 0 && closed {
			mu.Unlock()
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			return
		}
		c := queue[0]
		queue = queue[1:]
		mu.Unlock()
		if c.due.After(next) {
			next = c.due
		}
		time.Sleep(time.Until(next))
		if _, err := dst.Write(c.data); err != nil {
			src.Close()
			io.Copy(io.Discard, src)
			return
		}
		next = next.Add(time.Duration(float64(len(c.data)) / r.rate * float64(time.Second)))
		mu.Lock()
		held -= len(c.data)
		cond.Broadcast()
		mu.Unlock()
	}
}
