package tunnel

import (
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// corkConn sits between yamux and the TLS connection and joins each data
// frame's 12-byte header with the start of its body into one write. yamux's
// send loop writes the header and the body with two calls; over TLS each
// call is its own record and its own system call, so a small HTTP response
// would cost two of each. The yamux wire format (spec.md: version 0, type 0
// = data, length in bytes 8..12) says a data header with a non-zero length
// is always followed by its body, and only yamux's one send goroutine
// writes, so holding the header until the next write never holds it for
// long and needs no lock.
type corkConn struct {
	net.Conn
	hdr  [yamuxHeaderSize]byte
	held bool
	// lastRead is when bytes last arrived (Unix nanoseconds): traffic
	// proves the peer alive when a heartbeat's answer is stuck behind it.
	lastRead atomic.Int64
}

func newCorkConn(c net.Conn) *corkConn {
	cc := &corkConn{Conn: c}
	cc.lastRead.Store(time.Now().UnixNano())
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
	corkChunk = 16 << 10
)

var corkBufs = sync.Pool{New: func() any { b := make([]byte, corkChunk); return &b }}

func (c *corkConn) Write(p []byte) (int, error) {
	if !c.held && len(p) == yamuxHeaderSize && p[0] == 0 && p[1] == 0 && binary.BigEndian.Uint32(p[8:]) > 0 {
		copy(c.hdr[:], p)
		c.held = true
		return len(p), nil
	}
	if !c.held {
		return c.Conn.Write(p)
	}
	c.held = false
	bp := corkBufs.Get().(*[]byte)
	defer corkBufs.Put(bp)
	buf := *bp
	copy(buf, c.hdr[:])
	n := copy(buf[yamuxHeaderSize:], p)
	if _, err := c.Conn.Write(buf[:yamuxHeaderSize+n]); err != nil {
		return 0, err
	}
	if n == len(p) {
		return n, nil
	}
	m, err := c.Conn.Write(p[n:])
	return n + m, err
}
