package proxy

import "sync"

// bufferPool is ReverseProxy's BufferPool: 32 KiB copy buffers reused
// across requests instead of one allocated per response.
type bufferPool struct{ p sync.Pool }

const proxyBufSize = 128 << 10

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, proxyBufSize); return &b }}}
}

func (b *bufferPool) Get() []byte { return *b.p.Get().(*[]byte) }

func (b *bufferPool) Put(buf []byte) {
	if cap(buf) < proxyBufSize {
		return
	}
	buf = buf[:proxyBufSize]
	b.p.Put(&buf)
}
