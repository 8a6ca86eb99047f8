package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"slices"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/tunnel"
)

// BenchmarkBulkThroughput: one stream downloading through proxy + tunnel,
// against one TLS 1.3 stream on loopback.
func BenchmarkBulkThroughput(b *testing.B) {
	old := debug.SetGCPercent(benchGCPercent)
	defer debug.SetGCPercent(old)
	const size = 512 << 20
	be := backend(b)
	n := startNode(b, nodeOpts{production: true})
	agentFor(b, n, "token-a", be.addr, func(c *tunnel.AgentConfig) { c.Tunnel = tunnel.DefaultConfig() })
	tlsAddr, tlsClient := tlsSource(b, n.ca)
	download(b, n.public, 32<<20) // warm up
	// Interleaved pairs, medians of each side: one sample on a shared
	// machine swings by a fifth either way.
	const pairs = 6
	var ds, ts []float64
	for range pairs {
		ds = append(ds, tlsDownload(b, tlsAddr, tlsClient, size/pairs))
		ts = append(ts, download(b, n.public, size/pairs))
	}
	direct, tunneled := median(ds), median(ts)
	report(b, "proxy_tunnel_bulk_throughput", tunneled, "Gbit/s", direct, map[string]any{
		"baseline_is":    "one TLS 1.3 stream on loopback",
		"bytes":          size,
		"goal_ratio_min": 0.5,
	})
}

// BenchmarkBulkThroughput50msRTT: the same download with 50 ms of round
// trip and a 1 Gbit/s cap between agent and proxy, against plain TCP
// through the same kind of link; and with yamux's stock 256 KiB window,
// to show what the tuned window buys.
func BenchmarkBulkThroughput50msRTT(b *testing.B) {
	old := debug.SetGCPercent(benchGCPercent)
	defer debug.SetGCPercent(old)
	const rtt = 50 * time.Millisecond
	const link = 1e9
	const d = 4 * time.Second
	be := backend(b)

	tuned := tunnel.DefaultConfig()
	stock := tunnel.DefaultConfig()
	stock.MaxStreamWindow = 256 << 10
	run := func(cfg tunnel.Config) float64 {
		n := startNode(b, nodeOpts{production: true, tweak: func(c *Config) { c.Tunnel = cfg }})
		relay := startRelay(b, n.tunnel, rtt, link)
		agentFor(b, n, "token-a", be.addr, func(c *tunnel.AgentConfig) {
			c.Tunnel = cfg
			c.Addr = relay.Addr()
			c.TLS.ServerName = "127.0.0.1"
		})
		return downloadFor(b, n.public, d)
	}
	tunneled := run(tuned)
	stockWindow := run(stock)

	src := listen(b)
	go func() {
		buf := make([]byte, 256<<10)
		for {
			c, err := src.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	b.Cleanup(func() { src.Close() })
	relay := startRelay(b, src.Addr().String(), rtt, link)
	c, err := net.Dial("tcp", relay.Addr())
	if err != nil {
		b.Fatal(err)
	}
	direct := readFor(c, d)
	c.Close()

	report(b, "proxy_tunnel_bulk_throughput_50ms_rtt", tunneled, "Gbit/s", direct, map[string]any{
		"baseline_is":                 "plain TCP through the same 50 ms, 1 Gbit/s relay",
		"stream_window_bytes":         tuned.MaxStreamWindow,
		"stock_256k_window_gbit_s":    stockWindow,
		"stock_256k_window_ratio":     stockWindow / direct,
		"goal_ratio_min":              0.8,
		"seconds_per_measurement":     d.Seconds(),
		"relay_rtt_ms":                float64(rtt / time.Millisecond),
		"relay_link_bits_per_second":  link,
		"window_per_rtt_limit_gbit_s": float64(tuned.MaxStreamWindow) * 8 / 1e9 / rtt.Seconds(),
		"stock_window_limit_gbit_s":   float64(stock.MaxStreamWindow) * 8 / 1e9 / rtt.Seconds(),
	})
}

// tlsSource serves an endless TLS 1.3 stream on loopback.
func tlsSource(b *testing.B, ca *tunnel.DevCA) (string, *tls.Config) {
	b.Helper()
	sc, err := ca.ServerConfig("127.0.0.1")
	if err != nil {
		b.Fatal(err)
	}
	ln := tls.NewListener(listen(b), sc)
	b.Cleanup(func() { ln.Close() })
	go func() {
		buf := make([]byte, 256<<10)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
}

func tlsDownload(b *testing.B, addr string, tc *tls.Config, n int64) float64 {
	c, err := tls.Dial("tcp", addr, tc)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if v := c.ConnectionState().Version; v != tls.VersionTLS13 {
		b.Fatalf("TLS version %x, want 1.3", v)
	}
	g, err := discardN(c, n, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	return g
}

// download fetches n bytes of /bulk through the proxy on one connection
// and returns Gbit/s.
func download(b *testing.B, proxyAddr string, n int64) float64 {
	b.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	fmt.Fprintf(c, "GET /bulk?n=%d HTTP/1.1\r\nHost: %s\r\n\r\n", n, hostA)
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 64<<10), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("status %d", resp.StatusCode)
	}
	g, err := discardN(resp.Body, n, start)
	if err != nil {
		b.Fatal(err)
	}
	return g
}

// downloadFor reads an endless /bulk through the proxy for d and returns
// Gbit/s.
func downloadFor(b *testing.B, proxyAddr string, d time.Duration) float64 {
	b.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /bulk?n=%d HTTP/1.1\r\nHost: %s\r\n\r\n", int64(1)<<40, hostA)
	br := bufio.NewReaderSize(c, 64<<10)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		b.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b.Fatalf("status %d", resp.StatusCode)
	}
	return readFor(readerConn{resp.Body, c}, d)
}

type readerConn struct {
	io.Reader
	net.Conn
}

func (r readerConn) Read(p []byte) (int, error) { return r.Reader.Read(p) }

// readFor reads c for d and returns Gbit/s.
func readFor(c net.Conn, d time.Duration) float64 {
	buf := make([]byte, 256<<10)
	start := time.Now()
	c.SetReadDeadline(start.Add(d))
	var total int64
	for {
		n, err := c.Read(buf)
		total += int64(n)
		if err != nil {
			break
		}
	}
	return float64(total) * 8 / 1e9 / time.Since(start).Seconds()
}

var _ = context.Background

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
