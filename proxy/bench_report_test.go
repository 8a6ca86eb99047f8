package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"testing"
	"time"
)

// report prints one benchmark result as the JSON line `make bench` keeps:
// name, value, unit, baseline and ratio (value/baseline) first, then
// extra keys in name order.
func report(b *testing.B, name string, value float64, unit string, baseline float64, extra map[string]any) {
	b.Helper()
	var buf bytes.Buffer
	head, _ := json.Marshal(struct {
		Name     string  `json:"name"`
		Value    float64 `json:"value"`
		Unit     string  `json:"unit"`
		Baseline float64 `json:"baseline"`
		Ratio    float64 `json:"ratio"`
	}{name, round(value), unit, round(baseline), round(value / baseline)})
	buf.Write(head[:len(head)-1])
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := extra[k]
		if f, ok := v.(float64); ok {
			v = round(f)
		}
		kb, _ := json.Marshal(k)
		vb, _ := json.Marshal(v)
		fmt.Fprintf(&buf, ",%s:%s", kb, vb)
	}
	buf.WriteByte('}')
	fmt.Println(buf.String())
}

func round(f float64) float64 {
	s := strconv.FormatFloat(f, 'g', 4, 64)
	r, _ := strconv.ParseFloat(s, 64)
	return r
}

// leanConn is a minimal HTTP/1.1 keep-alive client connection, so the load
// generator spends as little of the machine's two cores as wrk would: it
// writes a prepared request and reads the status, headers and a
// Content-Length body.
type leanConn struct {
	c   net.Conn
	r   *bufio.Reader
	req []byte
}

func dialLean(addr, host, path string) (*leanConn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	req := []byte("GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: stagely-bench\r\n\r\n")
	return &leanConn{c: c, r: bufio.NewReaderSize(c, 16<<10), req: req}, nil
}

var errBadResponse = errors.New("bench client: unexpected response")

// do sends the request and reads the whole response; it returns the
// status code.
func (l *leanConn) do() (int, error) {
	if _, err := l.c.Write(l.req); err != nil {
		return 0, err
	}
	line, err := l.r.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	if len(line) < 12 {
		return 0, errBadResponse
	}
	status, _ := strconv.Atoi(string(line[9:12]))
	length := -1
	for {
		h, err := l.r.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(h) <= 2 {
			break
		}
		if len(h) > 16 && (h[0] == 'C' || h[0] == 'c') && bytes.EqualFold(h[:15], []byte("content-length:")) {
			length, _ = strconv.Atoi(string(bytes.TrimSpace(h[15:])))
		}
	}
	if length < 0 {
		return 0, fmt.Errorf("%w: no Content-Length", errBadResponse)
	}
	if _, err := l.r.Discard(length); err != nil {
		return 0, err
	}
	return status, nil
}

func (l *leanConn) Close() { l.c.Close() }

// closedLoop runs conns concurrent keep-alive connections, each sending
// requests back to back, for d, and returns requests per second.
func closedLoop(b *testing.B, addr, host, path string, conns int, d time.Duration) float64 {
	b.Helper()
	type res struct {
		n   int
		err error
	}
	out := make(chan res, conns)
	start := time.Now()
	deadline := start.Add(d)
	for range conns {
		go func() {
			lc, err := dialLean(addr, host, path)
			if err != nil {
				out <- res{err: err}
				return
			}
			defer lc.Close()
			n := 0
			for time.Now().Before(deadline) {
				status, err := lc.do()
				if err != nil || status != 200 {
					out <- res{n: n, err: fmt.Errorf("status %d: %v", status, err)}
					return
				}
				n++
			}
			out <- res{n: n}
		}()
	}
	total := 0
	for range conns {
		r := <-out
		if r.err != nil {
			b.Fatalf("load against %s: %v", addr, r.err)
		}
		total += r.n
	}
	return float64(total) / time.Since(start).Seconds()
}

// discardN reads n bytes from r and returns the rate in Gbit/s.
func discardN(r io.Reader, n int64, start time.Time) (float64, error) {
	got, err := io.CopyN(io.Discard, r, n)
	if err != nil {
		return 0, fmt.Errorf("after %d of %d bytes: %w", got, n, err)
	}
	return float64(n) * 8 / 1e9 / time.Since(start).Seconds(), nil
}
