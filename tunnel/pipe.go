package tunnel

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// copyBufSize is the size of the pooled buffers that move bytes between a
// stream and a local connection.
const copyBufSize = 128 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// Pipe copies a to b and b to a until both directions end, then closes
// both. A direction that reaches EOF half-closes its destination (so
// request bodies and responses can end independently); a write error or a
// read error other than EOF in either direction closes both at once, so
// neither side waits on a peer that is gone.
//
// When a is a tunnel stream whose peer ends its side, b has the peer's
// close timeout to finish: the peer resets the stream after it, and
// nothing says so here until a write fails. A service that keeps its end
// open without a word would otherwise hold the stream, its slot and the
// connection for ever.
func Pipe(a, b net.Conn) {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			past := time.Unix(1, 0)
			_ = a.SetDeadline(past)
			_ = b.SetDeadline(past)
			a.Close()
			b.Close()
		})
	}
	var closeWait time.Duration
	if s, ok := a.(interface{ peerCloseWait() time.Duration }); ok {
		closeWait = s.peerCloseWait()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if oneWay(b, a, abort) && closeWait > 0 {
			_ = b.SetReadDeadline(time.Now().Add(closeWait))
		}
	}()
	oneWay(a, b, abort)
	<-done
	a.Close()
	b.Close()
}

// oneWay copies src to dst with a pooled buffer. It reports whether src
// ended with EOF.
func oneWay(dst, src net.Conn, abort func()) bool {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				abort()
				return false
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				closeWrite(dst)
				return true
			}
			abort()
			return false
		}
	}
}

// closeWrite half-closes c when it can, and closes it otherwise.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			return
		}
	}
	c.Close()
}
