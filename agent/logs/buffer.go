package logs

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/stagely-dev/stagely/agent/protocol"
)

// DefaultBufferLines is a Buffer's capacity when NewBuffer is given none.
const DefaultBufferLines = 10_000

// Buffer holds log lines between their writers and one reader. Add never
// blocks: when the buffer is full the oldest line is dropped, and the
// reader gets a marker line saying how many were lost, where they were.
// Safe for concurrent use.
type Buffer struct {
	mu      sync.Mutex
	ring    []protocol.LogLine
	start   int // index of the oldest line
	n       int // lines held
	dropped int // lines dropped since the last Take
	closed  bool
	ready   chan struct{} // holds a token while lines are waiting
}

// NewBuffer holds up to capacity lines (DefaultBufferLines if <= 0).
func NewBuffer(capacity int) *Buffer {
	if capacity <= 0 {
		capacity = DefaultBufferLines
	}
	return &Buffer{ring: make([]protocol.LogLine, capacity), ready: make(chan struct{}, 1)}
}

// Add appends a line, dropping the oldest when full. After Close it does
// nothing.
func (b *Buffer) Add(l protocol.LogLine) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	if b.n == len(b.ring) {
		b.ring[b.start] = protocol.LogLine{}
		b.start = (b.start + 1) % len(b.ring)
		b.n--
		b.dropped++
	}
	b.ring[(b.start+b.n)%len(b.ring)] = l
	b.n++
	b.mu.Unlock()
	b.signal()
}

func (b *Buffer) signal() {
	select {
	case b.ready <- struct{}{}:
	default:
	}
}

// Close makes Take return io.EOF once the buffer is drained.
func (b *Buffer) Close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.signal()
}

// Take waits for lines and returns up to max of them (all if max <= 0),
// oldest first, preceded by a marker if lines were dropped. It returns
// io.EOF when the buffer is closed and empty, or ctx's error.
func (b *Buffer) Take(ctx context.Context, max int) ([]protocol.LogLine, error) {
	for {
		b.mu.Lock()
		if b.n > 0 || b.dropped > 0 {
			out := b.takeLocked(max)
			if b.n > 0 {
				b.signal()
			}
			b.mu.Unlock()
			return out, nil
		}
		closed := b.closed
		b.mu.Unlock()
		if closed {
			return nil, io.EOF
		}
		select {
		case <-b.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (b *Buffer) takeLocked(max int) []protocol.LogLine {
	k := b.n
	if max > 0 && k > max {
		k = max
	}
	out := make([]protocol.LogLine, 0, k+1)
	if b.dropped > 0 {
		out = append(out, protocol.LogLine{
			Time:    time.Now(),
			Stream:  protocol.StreamAgent,
			Text:    fmt.Sprintf("%d lines dropped", b.dropped),
			Dropped: b.dropped,
		})
		b.dropped = 0
	}
	for i := 0; i < k; i++ {
		j := (b.start + i) % len(b.ring)
		out = append(out, b.ring[j])
		b.ring[j] = protocol.LogLine{}
	}
	b.start = (b.start + k) % len(b.ring)
	b.n -= k
	return out
}
