package protocol_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/agent/protocol"
)

// One log batch within the 4 MiB frame limit must not cost the server
// many times that in memory (an agent runs the pull request's code, and
// may be hostile): MaxMessage bounds one stream, and a session may hold
// 128 streams. A batch past MaxLogLines is refused as it is decoded.
func TestALogBatchOfManyEmptyLinesIsRefusedBeforeItCostsMemory(t *testing.T) {
	h := &countingHandler{fakeHandler: newFakeHandler()}
	srv := &protocol.Server{Handler: h}
	a, b := net.Pipe()
	done := make(chan error, 1)
	// A frame of protocol.MaxMessage bytes: {"lines":[{},{},...,{}]}
	var buf bytes.Buffer
	buf.WriteString(`{"lines":[{}`)
	for buf.Len()+4 < protocol.MaxMessage {
		buf.WriteString(`,{}`)
	}
	buf.WriteString(`]}`)
	req, _ := json.Marshal(protocol.Request{Version: 1, Op: protocol.OpLogs, Token: "good",
		Logs: &protocol.LogsRequest{EnvironmentID: "env1", Generation: 1}})

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var peak uint64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > peak {
				peak = m.HeapAlloc
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	go func() { done <- srv.ServeStream(context.Background(), b) }()
	go func() {
		// The server may refuse before it reads the rest: these writes
		// then fail, once the test closes its end.
		for _, f := range [][]byte{req, buf.Bytes(), []byte(`{"final":true}`)} {
			var hdr [5]byte
			hdr[0] = 'M'
			binary.BigEndian.PutUint32(hdr[1:], uint32(len(f)))
			if _, err := a.Write(append(hdr[:], f...)); err != nil {
				return
			}
		}
	}()
	var hdr [5]byte
	if _, err := io.ReadFull(a, hdr[:]); err != nil {
		t.Fatal(err)
	}
	answer := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
	if _, err := io.ReadFull(a, answer); err != nil {
		t.Fatal(err)
	}
	a.Close()
	<-done
	runtime.ReadMemStats(&after)
	close(stopSampling)
	<-sampled
	alloc := after.TotalAlloc - before.TotalAlloc
	n := h.n
	t.Logf("frame %d bytes, %d lines decoded, %d MiB allocated, peak heap %d MiB; answer %s", buf.Len(), n, alloc>>20, peak>>20, answer)
	if alloc > 8*protocol.MaxMessage {
		t.Errorf("one %d-byte log frame made the server allocate %d MiB (%d lines)", buf.Len(), alloc>>20, n)
	}
	if n != 0 {
		t.Errorf("%d lines of a batch past the limit reached the handler", n)
	}
}

// countingHandler keeps no lines, only their count, so what is measured
// is the server's own decoding.
type countingHandler struct {
	*fakeHandler
	n int
}

func (h *countingHandler) Logs(_ context.Context, _ protocol.Identity, _ protocol.LogsRequest, lines []protocol.LogLine) error {
	h.n += len(lines)
	return nil
}
