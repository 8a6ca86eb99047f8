// Package slowlink relays TCP connections through an emulated long, narrow
// link, for tests and benchmarks on a kernel without netem: every chunk is
// held for half the round-trip time in each direction and each direction
// is paced to a rate. What a direction holds is bounded by what the link
// itself would hold, rate × one-way delay (the bytes "on the wire"), so the
// sender feels the link's back-pressure.
package slowlink

import (
	"net"
	"sync"
	"time"
)

// Relay forwards each connection it accepts to a target through the link.
type Relay struct {
	ln     net.Listener
	target string
	oneWay time.Duration
	rate   float64 // bytes per second
	buffer int

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// Options are a relay's settings beyond the link's delay and rate.
type Options struct {
	// SocketBuffer, when positive, sets the kernel buffers of the relay's
	// own sockets, so back-pressure reaches the sender sooner: loopback
	// buffers grow to megabytes and would hide a slow link's queue.
	SocketBuffer int
}

// Start listens on a loopback port and relays to target with the given
// round-trip time and rate in bits per second in each direction.
func Start(target string, rtt time.Duration, bitsPerSecond float64, o Options) (*Relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &Relay{ln: ln, target: target, oneWay: rtt / 2, rate: bitsPerSecond / 8,
		buffer: o.SocketBuffer, conns: map[net.Conn]struct{}{}}
	go r.serve()
	return r, nil
}

// Addr is where to connect to go through the link.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Close stops accepting and cuts every relayed connection.
func (r *Relay) Close() error {
	err := r.ln.Close()
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	return err
}

func (r *Relay) track(c net.Conn, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if on {
		r.conns[c] = struct{}{}
	} else {
		delete(r.conns, c)
	}
}

func (r *Relay) serve() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		go r.relay(c)
	}
}

func (r *Relay) relay(c net.Conn) {
	defer c.Close()
	t, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	defer t.Close()
	if r.buffer > 0 {
		for _, s := range []net.Conn{c, t} {
			if tc, ok := s.(*net.TCPConn); ok {
				_ = tc.SetReadBuffer(r.buffer)
				_ = tc.SetWriteBuffer(r.buffer)
			}
		}
	}
	r.track(c, true)
	r.track(t, true)
	defer r.track(c, false)
	defer r.track(t, false)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); r.pump(t, c) }()
	go func() { defer wg.Done(); r.pump(c, t) }()
	wg.Wait()
}

type chunk struct {
	data []byte
	due  time.Time
}

// pump moves src to dst through a delay line of capacity rate × oneWay.
func (r *Relay) pump(dst, src net.Conn) {
	capacity := max(int(r.rate*r.oneWay.Seconds()), 1)
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
				for held+n > capacity && held > 0 && !closed {
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
			// The far end is gone: cut the near one and let the reader
			// above drain into nothing.
			mu.Lock()
			closed = true
			cond.Broadcast()
			mu.Unlock()
			src.Close()
			return
		}
		next = next.Add(time.Duration(float64(len(c.data)) / r.rate * float64(time.Second)))
		mu.Lock()
		held -= len(c.data)
		cond.Broadcast()
		mu.Unlock()
	}
}
