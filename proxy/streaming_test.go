package proxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestWebSocketEcho(t *testing.T) {
	n := startNode(t, nodeOpts{})
	be := backend(t)
	agentFor(t, n, "token-a", be.addr)
	ctx := ctxTimeout(t, 10*time.Second)
	c, _, err := websocket.Dial(ctx, "ws://"+hostA+"/ws", &websocket.DialOptions{HTTPClient: client(n.public)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	for i := range 5 {
		msg := fmt.Sprintf("message %d", i)
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != "echo: "+msg {
			t.Fatalf("got %q", got)
		}
	}
	c.Close(websocket.StatusNormalClosure, "")
}

func TestServerSentEventsArriveAsSent(t *testing.T) {
	n := startNode(t, nodeOpts{})
	be := backend(t)
	agentFor(t, n, "token-a", be.addr)
	resp, err := client(n.public).Get("http://" + hostA + "/sse")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	start := time.Now()
	var arrivals []time.Duration
	for len(arrivals) < 3 {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("after %d events: %v", len(arrivals), err)
		}
		if strings.HasPrefix(line, "data: ") {
			arrivals = append(arrivals, time.Since(start))
		}
	}
	// The backend sends one event every 300 ms: each must arrive when sent,
	// not all together at the end.
	if arrivals[0] > 250*time.Millisecond || arrivals[1] < 200*time.Millisecond {
		t.Fatalf("events buffered: arrived at %v", arrivals)
	}
}

func TestLargeDownloadAndUploadWithChecksums(t *testing.T) {
	n := startNode(t, nodeOpts{})
	be := backend(t)
	agentFor(t, n, "token-a", be.addr)
	c := client(n.public)
	t.Run("download", func(t *testing.T) {
		const seed = 7
		resp, err := c.Get(fmt.Sprintf("http://%s/download?n=%d&seed=%d", hostA, bigTransfer, seed))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		h := sha256.New()
		got, err := io.Copy(h, resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		sent := be.sums.wait(t, seed)
		if got != bigTransfer || hex.EncodeToString(h.Sum(nil)) != sent {
			t.Fatalf("received %d bytes with sha256 %x; backend sent %d with %s", got, h.Sum(nil), bigTransfer, sent)
		}
	})
	t.Run("upload", func(t *testing.T) {
		const seed = 9
		want := make(chan string, 1)
		go func() { // the same deterministic bytes, hashed on the side
			h := sha256.New()
			io.Copy(h, randomReader(bigTransfer, seed))
			want <- fmt.Sprintf("%d %x", bigTransfer, h.Sum(nil))
		}()
		req, _ := http.NewRequest("POST", "http://"+hostA+"/upload", randomReader(bigTransfer, seed))
		req.ContentLength = bigTransfer
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("upload: status %d", resp.StatusCode)
		}
		if w := <-want; string(got) != w {
			t.Fatalf("backend received %q, sent %q", got, w)
		}
	})
}

func TestFiveHundredConcurrentRequests(t *testing.T) {
	n := startNode(t, nodeOpts{})
	be := backend(t)
	agentFor(t, n, "token-a", be.addr)
	c := client(n.public)
	const N = 500
	var wg sync.WaitGroup
	errs := make(chan error, N)
	start := make(chan struct{})
	for i := range N {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := c.Get(fmt.Sprintf("http://%s/slow?ms=200&i=%d", hostA, i))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || string(b) != "slow done" {
				errs <- fmt.Errorf("request %d: %d %q", i, resp.StatusCode, b)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if failed < 5 {
			t.Error(err)
		}
		failed++
	}
	if failed > 0 {
		t.Fatalf("%d of %d concurrent requests failed", failed, N)
	}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

var _ net.Conn
