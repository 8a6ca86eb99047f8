package tunnel

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// gateConn records writes, each of which waits for a token on gate (a
// connection whose peer is slow), or fails with failWith.
type gateConn struct {
	net.Conn
	gate     chan struct{}
	entered  chan struct{} // a write has started
	failWith error

	mu     sync.Mutex
	writes [][]byte
	closed bool
}

func newGateConn() *gateConn {
	return &gateConn{gate: make(chan struct{}, 16), entered: make(chan struct{}, 16)}
}

func (g *gateConn) Write(p []byte) (int, error) {
	g.entered <- struct{}{}
	<-g.gate
	if g.failWith != nil {
		return 0, g.failWith
	}
	g.mu.Lock()
	g.writes = append(g.writes, append([]byte(nil), p...))
	g.mu.Unlock()
	return len(p), nil
}

func (g *gateConn) Close() error {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	return nil
}

func (g *gateConn) snapshot() ([][]byte, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([][]byte(nil), g.writes...), g.closed
}

// newBusyCork is a corkConn that takes every frame as part of a busy
// spell, so that small frames go through the flusher.
func newBusyCork(c net.Conn) *corkConn {
	cc := newCorkConn(c)
	cc.idleGap = time.Hour
	return cc
}

func frame(body string) [][]byte {
	return [][]byte{yamuxHeader(0, uint32(len(body))), []byte(body)}
}

func TestCorkCommitsSmallFramesInGroups(t *testing.T) {
	g := newGateConn()
	c := newBusyCork(g)
	write := func(ws [][]byte) {
		t.Helper()
		for _, w := range ws {
			if n, err := c.Write(w); err != nil || n != len(w) {
				t.Fatalf("Write = %d, %v", n, err)
			}
		}
	}
	// The first frame goes to the connection at once; the flusher is now
	// in its (slow) write.
	write(frame("first"))
	<-g.entered
	// Frames queued meanwhile do not wait for it: Write returns at once.
	write(frame("second"))
	write([][]byte{yamuxHeader(1, 0)}) // a window update
	write(frame("third"))
	g.gate <- struct{}{} // first write done
	<-g.entered          // the batch
	g.gate <- struct{}{}
	c.waitFlushed()

	got, _ := g.snapshot()
	want := [][]byte{
		bytes.Join(frame("first"), nil),
		bytes.Join(append(append(frame("second"), yamuxHeader(1, 0)), frame("third")...), nil),
	}
	if len(got) != len(want) {
		t.Fatalf("%d writes reached the connection, want %d (the frames queued during a write leave as one)", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("write %d = %q, want %q", i, got[i], want[i])
		}
	}
}

func TestCorkWritesAFrameAfterAQuietSpellAtOnce(t *testing.T) {
	g := newGateConn()
	c := newCorkConn(g)
	c.idleGap = 0 // every frame comes after a quiet spell
	for _, body := range []string{"lone", "another"} {
		done := make(chan struct{})
		go func() {
			defer close(done)
			for _, w := range frame(body) {
				c.Write(w)
			}
		}()
		<-g.entered
		select {
		case <-done:
			t.Fatalf("%s: Write returned before its frame was written: it went to the flusher", body)
		case <-time.After(50 * time.Millisecond):
		}
		g.gate <- struct{}{}
		<-done
		got, _ := g.snapshot()
		if last := got[len(got)-1]; !bytes.Equal(last, bytes.Join(frame(body), nil)) {
			t.Fatalf("%s: written %q, want header and body in one write", body, last)
		}
	}
}

func TestCorkLargeWriteWaitsForPendingFrames(t *testing.T) {
	g := newGateConn()
	c := newBusyCork(g)
	c.Write(yamuxHeader(0, 1))
	c.Write([]byte("a"))
	<-g.entered
	big := bytes.Repeat([]byte("b"), corkChunk*2)
	done := make(chan error, 1)
	go func() {
		c.Write(yamuxHeader(0, uint32(len(big))))
		_, err := c.Write(big)
		done <- err
	}()
	select {
	case <-g.entered:
		t.Fatal("a large write overtook a pending frame")
	case <-time.After(50 * time.Millisecond):
	}
	for range 3 { // the small frame, then the large one in two writes
		g.gate <- struct{}{}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got, _ := g.snapshot()
	all := bytes.Join(got, nil)
	want := bytes.Join([][]byte{yamuxHeader(0, 1), []byte("a"), yamuxHeader(0, uint32(len(big))), big}, nil)
	if !bytes.Equal(all, want) {
		t.Fatal("bytes reordered or changed on the way")
	}
	if len(got) != 3 || len(got[1]) != corkChunk {
		t.Fatalf("write sizes wrong: %d writes", len(got))
	}
}

func TestCorkWriteErrorClosesAndIsReturned(t *testing.T) {
	g := newGateConn()
	g.failWith = errors.New("connection reset")
	c := newBusyCork(g)
	c.Write(frame("x")[0])
	if _, err := c.Write(frame("x")[1]); err != nil {
		t.Fatalf("a queued write failed early: %v", err)
	}
	g.gate <- struct{}{}
	c.waitFlushed()
	if _, closed := g.snapshot(); !closed {
		t.Fatal("a failed write left the connection open")
	}
	if _, err := c.Write(yamuxHeader(1, 0)); !errors.Is(err, g.failWith) {
		t.Fatalf("next Write = %v, want the write error", err)
	}
}

func TestCorkCloseWakesAWaitingWrite(t *testing.T) {
	g := newGateConn()
	c := newBusyCork(g)
	c.Write(frame("x")[0])
	c.Write(frame("x")[1])
	<-g.entered // the flusher is stuck: the peer reads nothing
	done := make(chan error, 1)
	go func() {
		body := bytes.Repeat([]byte("y"), corkChunk)
		for {
			c.Write(yamuxHeader(0, uint32(len(body))))
			if _, err := c.Write(body); err != nil {
				done <- err
				return
			}
		}
	}()
	select {
	case err := <-done:
		t.Fatalf("writes beyond the pending limit did not wait: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("waiting Write = %v, want net.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close left a Write waiting")
	}
	g.gate <- struct{}{}
}
