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

// Pipe copies a, a tunnel stream, to b, the service's connection, and b
// to a, until both directions end, then closes both. When the service
// ends its side (EOF), the stream is half-closed, so a response that runs
// to the connection's close reaches its end. When the proxy ends its side,
// it is done with the stream (its client went away, or the connection's
// exchange is over: it never half-closes one it still reads), so both
// close at once: what the service would go on sending could only wait in
// the proxy's memory, in a window no stream slot accounts for any more,
// until the proxy's close timeout resets the stream. A read error other
// than EOF and a write error in either direction also close both.
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
	done := make(chan struct{})
	go func() {
		defer close(done)
		oneWay(b, a, abort, abort)
	}()
	oneWay(a, b, abort, func() { closeWrite(a) })
	<-done
	a.Close()
	b.Close()
}

// oneWay copies src to dst with a pooled buffer, and calls eof when src
// ends with EOF, abort on any other error.
func oneWay(dst, src net.Conn, abort, eof func()) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				abort()
				return
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				eof()
				return
			}
			abort()
			return
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
