package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestHelloAndAnswerRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if err := writeHello(&buf, Version, hello{Token: "tok", AgentVersion: "v1"}); err != nil {
		t.Fatal(err)
	}
	v, h, err := readHello(&buf)
	if err != nil || v != Version || h.Token != "tok" || h.AgentVersion != "v1" {
		t.Fatalf("readHello = %d %+v %v", v, h, err)
	}
	buf.Reset()
	wel := Welcome{Agent: "a", Environment: "e", Hostnames: []string{"x.test"}, KeepAliveMS: 10000}
	writeAnswer(&buf, statusAccepted, wel)
	got, err := readAnswer(&buf)
	if err != nil || got.Agent != "a" || got.Hostnames[0] != "x.test" {
		t.Fatalf("readAnswer = %+v %v", got, err)
	}
}

func TestMalformedHellosAreProtocolErrors(t *testing.T) {
	long := make([]byte, 7)
	copy(long, helloMagic)
	long[4] = Version
	binary.BigEndian.PutUint16(long[5:], maxHelloBody+1)
	tests := []struct {
		name string
		in   []byte
	}{
		{"wrong magic", []byte("HTTP/1.1 200 OK\r\n")},
		{"empty body", append([]byte(helloMagic), Version, 0, 0)},
		{"body over the limit", long},
		{"body that is not JSON", append([]byte(helloMagic), Version, 0, 3, 'x', 'y', 'z')},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := readHello(bytes.NewReader(tt.in)); !errors.Is(err, ErrProtocol) {
				t.Fatalf("err = %v, want ErrProtocol", err)
			}
		})
	}
}

func TestStreamHeaderRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	writeStreamHeader(&buf, StreamPreview, "abc.preview.test")
	typ, text, err := readStreamHeader(&buf)
	if err != nil || typ != StreamPreview || text != "abc.preview.test" {
		t.Fatalf("got %v %q %v", typ, text, err)
	}
	if err := writeStreamHeader(&buf, StreamControl, strings.Repeat("x", 256)); !errors.Is(err, ErrProtocol) {
		t.Fatalf("over-long header: %v", err)
	}
}

// recordConn records each Write as one element.
type recordConn struct {
	net.Conn
	writes [][]byte
}

func (r *recordConn) Write(p []byte) (int, error) {
	r.writes = append(r.writes, append([]byte(nil), p...))
	return len(p), nil
}

func yamuxHeader(typ byte, length uint32) []byte {
	h := make([]byte, 12)
	h[1] = typ
	binary.BigEndian.PutUint32(h[4:], 1)
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

func TestCorkJoinsDataHeaderWithItsBody(t *testing.T) {
	big := bytes.Repeat([]byte("b"), corkChunk*2)
	tests := []struct {
		name   string
		writes [][]byte
		want   []int // sizes of the writes that reach the connection
	}{
		{"a data frame goes out as one write", [][]byte{yamuxHeader(0, 5), []byte("hello")}, []int{17}},
		{"a window update goes out alone at once", [][]byte{yamuxHeader(1, 0)}, []int{12}},
		{"a ping goes out alone at once", [][]byte{yamuxHeader(2, 0)}, []int{12}},
		{"an empty data frame (FIN) goes out at once", [][]byte{yamuxHeader(0, 0)}, []int{12}},
		{"a large body rides one record with the header, the rest follows", [][]byte{yamuxHeader(0, uint32(len(big))), big}, []int{corkChunk, len(big) + 12 - corkChunk}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := &recordConn{}
			c := &corkConn{Conn: rc}
			for _, w := range tt.writes {
				if n, err := c.Write(w); err != nil || n != len(w) {
					t.Fatalf("Write = %d, %v", n, err)
				}
				c.waitFlushed()
			}
			var got []int
			var all []byte
			for _, w := range rc.writes {
				got = append(got, len(w))
				all = append(all, w...)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("writes %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("writes %v, want %v", got, tt.want)
				}
			}
			if !bytes.Equal(all, bytes.Join(tt.writes, nil)) {
				t.Fatal("bytes changed on the way")
			}
		})
	}
}

func TestPipeClosesBothSidesWhenOneFails(t *testing.T) {
	a1, a2 := net.Pipe()
	b1, b2 := net.Pipe()
	done := make(chan struct{})
	go func() { Pipe(a2, b1); close(done) }()
	go io.Copy(io.Discard, a1)
	// The far side of b goes away: writes into it fail, and the pipe must
	// close a too instead of waiting.
	b2.Close()
	a1.Write([]byte("data that cannot be delivered"))
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Pipe still running after one side failed")
	}
	if _, err := a1.Write([]byte("x")); err == nil {
		t.Fatal("the other side is still open")
	}
}

func TestForwardPicksTargetByHostname(t *testing.T) {
	f := &Forward{Targets: map[string]string{"app.test": "1:1", "*.wild.test": "2:2", "*": "3:3"}}
	tests := []struct{ host, want string }{
		{"app.test", "1:1"},
		{"x.wild.test", "2:2"},
		{"other.test", "3:3"},
	}
	for _, tt := range tests {
		if got, _ := f.Target(tt.host); got != tt.want {
			t.Errorf("target(%s) = %s, want %s", tt.host, got, tt.want)
		}
	}
	if _, ok := (&Forward{Targets: map[string]string{"a.test": "1:1"}}).Target("b.test"); ok {
		t.Error("a hostname with no target got one")
	}
}
