package tunnel

import (
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// corkConn sits between yamux and the TLS connection and cuts the number
// of writes (each a TLS record and a system call) in two ways.
//
// It joins each data frame's 12-byte header with its body: yamux's send
// loop writes the header and the body with two calls, so a small HTTP
// response would cost two records and two system calls. The yamux wire
// format (spec.md: version 0, type 0 = data, length in bytes 8..12) says a
// data header with a non-zero length is always followed by its body, and
// only yamux's one send goroutine writes, so holding the header until the
// next write never holds it for long.
//
// And it commits small frames in groups when the connection is busy. A
// frame that comes after a quiet spell (idleGap since the last one) is
// written at once by the caller, yamux's send loop: a lone request or
// response then leaves without a handoff to another goroutine, which on a
// machine with idle cores costs a wakeup on each side of the tunnel. A
// frame that follows closely on another is appended to a pending buffer
// and handed to a flusher goroutine, so that the frames of other streams
// that yamux's send loop takes while the flusher is in its system call
// leave together, in one record and one call: a busy connection with many
// small streams pays a fraction of a system call per frame. A large write
// (bulk data) waits for the flusher and goes out directly, without a
// copy. A write error is returned by the next Write, and it closes the
// connection, which ends the session.
type corkConn struct {
	net.Conn
	hdr  [yamuxHeaderSize]byte
	held bool
	// lastRead is when bytes last arrived (Unix nanoseconds): traffic
	// proves the peer alive when a heartbeat's answer is stuck behind it.
	lastRead atomic.Int64

	mu       sync.Mutex
	cond     sync.Cond // signalled when the flusher is done with a batch
	pending  *[]byte   // small frames not yet written; nil when idle
	flushing bool      // a flusher (or a direct write) is writing
	err      error     // the first write error, or net.ErrClosed
	// lastWrite is when Write was last called (Unix nanoseconds); a frame
	// more than idleGap after it is written at once.
	lastWrite int64
	idleGap   time.Duration
}

func newCorkConn(c net.Conn) *corkConn {
	now := time.Now().UnixNano()
	cc := &corkConn{Conn: c, lastWrite: now, idleGap: corkIdleGap}
	cc.lastRead.Store(now)
	return cc
}

func (c *corkConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.lastRead.Store(time.Now().UnixNano())
	}
	return n, err
}

// quietFor is how long nothing has arrived.
func (c *corkConn) quietFor() time.Duration {
	return time.Since(time.Unix(0, c.lastRead.Load()))
}

const (
	yamuxHeaderSize = 12
	// corkChunk is how much body rides with a held header: one TLS record.
	// Writes up to this size are committed in groups.
	corkChunk = 16 << 10
	// corkPending bounds the bytes waiting for the flusher: beyond it the
	// send loop waits, as it would on the connection itself.
	corkPending = 64 << 10
	// corkIdleGap is the quiet spell after which a frame is written at
	// once: at least the time a request takes through the agent and back,
	// so that a single exchange goes unbatched, while a stream of frames
	// (many concurrent streams, or one stream's body) is batched.
	corkIdleGap = 100 * time.Microsecond
)

var corkBufs = sync.Pool{New: func() any { b := make([]byte, 0, corkPending+corkChunk+yamuxHeaderSize); return &b }}

func (c *corkConn) Write(p []byte) (int, error) {
	if !c.held && len(p) == yamuxHeaderSize && p[0] == 0 && p[1] == 0 && binary.BigEndian.Uint32(p[8:]) > 0 {
		copy(c.hdr[:], p)
		c.held = true
		return len(p), nil
	}
	var hdr []byte
	if c.held {
		hdr = c.hdr[:]
		c.held = false
	}
	c.lock()
	now := time.Now().UnixNano()
	quiet := time.Duration(now-c.lastWrite) >= c.idleGap
	c.lastWrite = now
	small := len(p) <= corkChunk
	for c.err == nil && c.flushing && (!small || c.pending != nil && len(*c.pending)+len(hdr)+len(p) > corkPending) {
		c.cond.Wait()
	}
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, err
	}
	if !small || quiet && !c.flushing {
		// Nothing is pending (the flusher is idle): write directly.
		return c.writeThrough(hdr, p)
	}
	if c.pending == nil {
		c.pending = corkBufs.Get().(*[]byte)
	}
	*c.pending = append(append(*c.pending, hdr...), p...)
	if !c.flushing {
		c.flushing = true
		go c.flush()
	}
	c.mu.Unlock()
	return len(p), nil
}

// writeThrough writes hdr and p from the caller's goroutine, with no
// flusher running; c.mu is held, and released on return.
func (c *corkConn) writeThrough(hdr, p []byte) (int, error) {
	c.flushing = true
	c.mu.Unlock()
	n, err := c.writeJoined(hdr, p)
	c.mu.Lock()
	c.flushing = false
	c.fail(err)
	c.cond.Broadcast()
	c.mu.Unlock()
	return n, err
}

// writeJoined writes a held header joined with its body, or with the
// body's first record's worth when the body is larger.
func (c *corkConn) writeJoined(hdr, p []byte) (int, error) {
	if hdr == nil {
		return c.Conn.Write(p)
	}
	bp := corkBufs.Get().(*[]byte)
	defer corkBufs.Put(bp)
	n := min(len(p), corkChunk-len(hdr))
	buf := append(append((*bp)[:0], hdr...), p[:n]...)
	if _, err := c.Conn.Write(buf); err != nil {
		return 0, err
	}
	if n == len(p) {
		return n, nil
	}
	m, err := c.Conn.Write(p[n:])
	return n + m, err
}

// flush writes pending batches until there are none.
func (c *corkConn) flush() {
	c.lock()
	for c.pending != nil && c.err == nil {
		bp := c.pending
		c.pending = nil
		c.mu.Unlock()
		_, err := c.Conn.Write(*bp)
		*bp = (*bp)[:0]
		corkBufs.Put(bp)
		c.mu.Lock()
		c.fail(err)
		c.cond.Broadcast()
	}
	c.flushing = false
	c.cond.Broadcast()
	c.mu.Unlock()
}

// fail records the first write error and closes the connection; c.mu is
// held.
func (c *corkConn) fail(err error) {
	if err == nil || c.err != nil {
		return
	}
	c.err = err
	_ = c.Conn.Close()
}

// lock takes c.mu, making c.cond first if needed.
func (c *corkConn) lock() {
	c.mu.Lock()
	if c.cond.L == nil {
		c.cond.L = &c.mu
	}
}

// waitFlushed waits until everything written so far has reached the
// connection (or failed).
func (c *corkConn) waitFlushed() {
	c.lock()
	for c.flushing && c.err == nil {
		c.cond.Wait()
	}
	c.mu.Unlock()
}

// Close closes the connection and wakes a write waiting for the flusher.
// Frames not yet written are dropped, as yamux drops the frames still
// queued when its session shuts down.
func (c *corkConn) Close() error {
	c.lock()
	if c.err == nil {
		c.err = net.ErrClosed
	}
	c.cond.Broadcast()
	c.mu.Unlock()
	return c.Conn.Close()
}
