package logs

import (
	"bytes"
	"strings"
	"sync"
)

// DefaultMaxLine is the longest line kept whole; longer runs without a
// newline are cut into several lines.
const DefaultMaxLine = 16 << 10

// LineWriter is an io.Writer that turns a byte stream into masked lines.
// Writes may split lines (and secrets) anywhere; each line is masked whole
// before it is emitted. Safe for concurrent use, though concurrent writers
// interleave at write boundaries: give each stream its own LineWriter.
type LineWriter struct {
	mu      sync.Mutex
	masker  *Masker
	emit    func(line string)
	maxLine int
	buf     []byte
}

// NewLineWriter emits each masked line (without its newline) to emit.
func NewLineWriter(m *Masker, emit func(line string)) *LineWriter {
	return &LineWriter{masker: m, emit: emit, maxLine: DefaultMaxLine}
}

// Write implements io.Writer. It never fails.
func (w *LineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.line(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	for len(w.buf) > w.maxLine {
		// A runaway line: emit its head, but keep enough of its tail that
		// a secret only partly written yet stays whole for masking.
		s := string(w.buf)
		cut := w.masker.safeCut(s, len(s)-max(w.masker.longest()-1, 0))
		if cut <= 0 {
			break
		}
		w.emit(w.masker.Mask(s[:cut]))
		w.buf = w.buf[cut:]
	}
	if len(w.buf) == 0 {
		w.buf = nil // let a large backing array go
	}
	return len(p), nil
}

// Flush emits what is left as a last line.
func (w *LineWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.line(string(w.buf))
		w.buf = nil
	}
}

func (w *LineWriter) line(s string) {
	w.emit(w.masker.Mask(strings.TrimSuffix(s, "\r")))
}
