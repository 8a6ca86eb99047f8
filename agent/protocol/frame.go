package protocol

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
)

// Frame kinds: the first byte of every frame.
const (
	kindMessage byte = 'M' // payload is one JSON value
	kindData    byte = 'D' // payload is raw bytes of a source tarball
)

// Frame size limits. A frame is 1 kind byte, a 4-byte big-endian payload
// length, then the payload.
const (
	// MaxMessage bounds a JSON frame (a deployment with its secrets, a log
	// batch).
	MaxMessage = 4 << 20
	// MaxData bounds a data frame; senders use dataChunk.
	MaxData = 1 << 20
	// dataChunk is the size of the data frames this package writes.
	dataChunk = 64 << 10
)

// frameWriter writes frames to one stream. Not safe for concurrent use.
type frameWriter struct {
	w   io.Writer
	hdr [5]byte
}

func (fw *frameWriter) writeFrame(kind byte, payload []byte) error {
	fw.hdr[0] = kind
	binary.BigEndian.PutUint32(fw.hdr[1:], uint32(len(payload)))
	if _, err := fw.w.Write(fw.hdr[:]); err != nil {
		return err
	}
	if len(payload) == 0 {
		return nil
	}
	_, err := fw.w.Write(payload)
	return err
}

func (fw *frameWriter) writeMessage(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %T: %w", v, err)
	}
	if len(b) > MaxMessage {
		return fmt.Errorf("encode %T: %d bytes: %w", v, len(b), ErrFrameTooLarge)
	}
	return fw.writeFrame(kindMessage, b)
}

// frameReader reads frames from one stream. Not safe for concurrent use.
type frameReader struct {
	r   io.Reader
	hdr [5]byte
	buf []byte
}

// next reads one frame. The payload is valid until the next call.
func (fr *frameReader) next() (kind byte, payload []byte, err error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return 0, nil, err
	}
	kind = fr.hdr[0]
	n := binary.BigEndian.Uint32(fr.hdr[1:])
	limit := uint32(MaxMessage)
	switch kind {
	case kindMessage:
	case kindData:
		limit = MaxData
	default:
		return 0, nil, fmt.Errorf("unknown frame kind %q: %w", kind, ErrBadRequest)
	}
	if n > limit {
		return 0, nil, fmt.Errorf("%c frame of %d bytes: %w", kind, n, ErrFrameTooLarge)
	}
	if cap(fr.buf) < int(n) {
		fr.buf = make([]byte, n)
	}
	fr.buf = fr.buf[:n]
	if _, err := io.ReadFull(fr.r, fr.buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return kind, fr.buf, nil
}

// readMessage reads one frame, which must be a message, into v.
func (fr *frameReader) readMessage(v any) error {
	kind, payload, err := fr.next()
	if err != nil {
		return err
	}
	if kind != kindMessage {
		return fmt.Errorf("want a message frame, got %q: %w", kind, ErrBadRequest)
	}
	return decodeMessage(payload, v)
}

// decodeMessage decodes a message frame's payload into v.
func decodeMessage(payload []byte, v any) error {
	if err := json.Unmarshal(payload, v); err != nil {
		return fmt.Errorf("decode %T: %v: %w", v, err, ErrBadRequest)
	}
	return nil
}
