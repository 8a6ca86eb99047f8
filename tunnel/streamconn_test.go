package tunnel

import (
	"bytes"
	"net"
	"sync"
	"testing"
	"time"
)

// heldConn records what is written to it; its first write waits until
// release is closed, as a writer preempted on its way to the stream would.
type heldConn struct {
	net.Conn
	entered, release chan struct{}
	done             chan struct{} // ends reads
	once             sync.Once
	mu               sync.Mutex
	writes           [][]byte
}

func (c *heldConn) Write(p []byte) (int, error) {
	first := false
	c.once.Do(func() { first = true })
	if first {
		close(c.entered)
		<-c.release
	}
	c.mu.Lock()
	c.writes = append(c.writes, bytes.Clone(p))
	c.mu.Unlock()
	return len(p), nil
}

func (c *heldConn) Read([]byte) (int, error) {
	<-c.done
	return 0, net.ErrClosed
}

func (c *heldConn) recorded() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

// TestStreamHeaderGoesOutBeforeAConcurrentWrite: http.Transport reads a
// new connection (its read loop's Peek, which sends our stream header)
// while it writes the request. The request must not overtake the header,
// or the agent reads "GE" as a stream type and the client gets a 502.
func TestStreamHeaderGoesOutBeforeAConcurrentWrite(t *testing.T) {
	hc := &heldConn{entered: make(chan struct{}), release: make(chan struct{}), done: make(chan struct{})}
	defer close(hc.done)
	sc := newStreamConn(hc, StreamPreview, "a.preview.test", nil)
	go sc.Read(make([]byte, 1)) // sends the header, held in the write
	<-hc.entered
	wrote := make(chan struct{})
	go func() {
		sc.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		close(wrote)
	}()
	// Give the request every chance to overtake the held header.
	select {
	case <-wrote:
	case <-time.After(100 * time.Millisecond):
	}
	close(hc.release)
	<-wrote
	w := hc.recorded()
	if len(w) != 2 || w[0][0] != byte(StreamPreview) || string(w[1]) != "GET / HTTP/1.1\r\n\r\n" {
		t.Fatalf("writes reached the stream as %q; want the header, then the request", w)
	}
}
