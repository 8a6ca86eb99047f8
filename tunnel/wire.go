package tunnel

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
)

// hello is the agent's first message (PROTOCOL.md section 2).
type hello struct {
	Token        string `json:"token"`
	AgentVersion string `json:"agent_version,omitempty"`
}

// Welcome is the proxy's answer to an accepted hello (PROTOCOL.md section 3):
// who the agent is and which hostnames it may serve.
type Welcome struct {
	Agent       string   `json:"agent"`
	Environment string   `json:"environment"`
	Hostnames   []string `json:"hostnames"`
	KeepAliveMS int64    `json:"keepalive_ms,omitempty"`
}

func writeHello(w io.Writer, version byte, h hello) error {
	body, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("encode hello: %w", err)
	}
	if len(body) > maxHelloBody {
		return fmt.Errorf("%w: hello of %d bytes is over %d", ErrProtocol, len(body), maxHelloBody)
	}
	buf := make([]byte, 0, 7+len(body))
	buf = append(buf, helloMagic...)
	buf = append(buf, version)
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(body)))
	buf = append(buf, body...)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	return nil
}

// readHello returns the version the agent spoke and, when it is ours, the
// hello itself.
func readHello(r io.Reader) (byte, hello, error) {
	var head [7]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return 0, hello{}, fmt.Errorf("read hello: %w", err)
	}
	if string(head[:4]) != helloMagic {
		return 0, hello{}, fmt.Errorf("%w: not a Stagely tunnel hello", ErrProtocol)
	}
	version := head[4]
	n := int(binary.BigEndian.Uint16(head[5:]))
	if version != Version {
		// The size limits below are this version's: another's hello may
		// be empty or larger, and its agent must still hear "version".
		// It is read whole (at most 64 KiB), or closing with it unread
		// would reset the connection and lose the refusal.
		if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
			return version, hello{}, fmt.Errorf("read hello body: %w", err)
		}
		return version, hello{}, nil
	}
	if n == 0 || n > maxHelloBody {
		return version, hello{}, fmt.Errorf("%w: hello body of %d bytes", ErrProtocol, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return version, hello{}, fmt.Errorf("read hello body: %w", err)
	}
	var h hello
	if err := json.Unmarshal(body, &h); err != nil {
		return version, hello{}, fmt.Errorf("%w: hello body: %v", ErrProtocol, err)
	}
	return version, h, nil
}

func writeAnswer(w io.Writer, status byte, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode answer: %w", err)
	}
	if len(body) > maxAnswerBody {
		return fmt.Errorf("%w: answer of %d bytes is over %d", ErrProtocol, len(body), maxAnswerBody)
	}
	buf := make([]byte, 0, 4+len(body))
	buf = append(buf, Version, status)
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(body)))
	buf = append(buf, body...)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("send answer: %w", err)
	}
	return nil
}

// readAnswer returns the Welcome of an accepted hello, or a *Refusal.
func readAnswer(r io.Reader) (Welcome, error) {
	var head [4]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return Welcome{}, fmt.Errorf("read answer: %w", err)
	}
	if head[0] != Version {
		return Welcome{}, fmt.Errorf("%w: proxy speaks version %d, this agent %d", ErrProtocol, head[0], Version)
	}
	n := int(binary.BigEndian.Uint16(head[2:]))
	if n > maxAnswerBody {
		return Welcome{}, fmt.Errorf("%w: answer body of %d bytes", ErrProtocol, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return Welcome{}, fmt.Errorf("read answer body: %w", err)
	}
	switch head[1] {
	case statusAccepted:
		var wel Welcome
		if err := json.Unmarshal(body, &wel); err != nil {
			return Welcome{}, fmt.Errorf("%w: answer body: %v", ErrProtocol, err)
		}
		return wel, nil
	case statusRefused:
		ref := &Refusal{}
		if err := json.Unmarshal(body, ref); err != nil {
			return Welcome{}, fmt.Errorf("%w: refusal body: %v", ErrProtocol, err)
		}
		return Welcome{}, ref
	}
	return Welcome{}, fmt.Errorf("%w: answer status %d", ErrProtocol, head[1])
}

// writeStreamHeader starts a stream (PROTOCOL.md section 5).
func writeStreamHeader(w io.Writer, t StreamType, text string) error {
	if len(text) > maxStreamHeader {
		return fmt.Errorf("%w: stream header text of %d bytes", ErrProtocol, len(text))
	}
	var buf [2 + maxStreamHeader]byte
	buf[0], buf[1] = byte(t), byte(len(text))
	n := copy(buf[2:], text)
	if _, err := w.Write(buf[:2+n]); err != nil {
		return fmt.Errorf("write %s stream header: %w", t, err)
	}
	return nil
}

func readStreamHeader(r io.Reader) (StreamType, string, error) {
	var head [2]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return 0, "", fmt.Errorf("read stream header: %w", err)
	}
	if head[1] == 0 {
		return StreamType(head[0]), "", nil
	}
	text := make([]byte, head[1])
	if _, err := io.ReadFull(r, text); err != nil {
		return 0, "", fmt.Errorf("read stream header text: %w", err)
	}
	return StreamType(head[0]), string(text), nil
}
