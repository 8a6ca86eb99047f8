package proxy

import (
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"runtime/debug"
	"slices"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/tunnel"
)

// benchGCPercent is the GC target `stagely proxy` runs with
// (--gc-percent); the benchmarks set it for the whole process, baselines
// included.
const benchGCPercent = 400

// benchPath is a proxy node with one agent in front of a backend, plus a
// stock one-hop httputil.ReverseProxy to the same backend, all on
// loopback in this process.
type benchPath struct {
	backend string // direct
	proxy   string // proxy + tunnel
	stock   string // stock one-hop ReverseProxy over plain TCP
}

func setupBenchPath(b *testing.B) benchPath {
	b.Helper()
	old := debug.SetGCPercent(benchGCPercent)
	b.Cleanup(func() { debug.SetGCPercent(old) })
	be := backend(b)
	n := startNode(b, nodeOpts{production: true})
	agentFor(b, n, "token-a", be.addr, func(c *tunnel.AgentConfig) { c.Tunnel = tunnel.DefaultConfig() })
	u, _ := url.Parse("http://" + be.addr)
	stock := httputil.NewSingleHostReverseProxy(u)
	stock.Transport = http.DefaultTransport.(*http.Transport).Clone()
	ln := listen(b)
	srv := &http.Server{Handler: stock}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return benchPath{backend: be.addr, proxy: n.public, stock: ln.Addr().String()}
}

// BenchmarkRequestsPerSecond: small responses over 64 keep-alive
// connections, through proxy + tunnel and direct to the same backend.
func BenchmarkRequestsPerSecond(b *testing.B) {
	p := setupBenchPath(b)
	const conns = 64
	for _, addr := range []string{p.backend, p.proxy, p.stock} {
		closedLoop(b, addr, hostA, "/tiny", conns, 300*time.Millisecond) // warm up
	}
	// Interleaved slices, so a change in the machine's load during the run
	// (other processes share its two cores) falls on every path alike.
	rates := interleaved(b, []string{p.backend, p.proxy, p.stock}, conns, 6, 500*time.Millisecond)
	direct, tunneled, stock := rates[0], rates[1], rates[2]
	report(b, "proxy_tunnel_requests_per_second", tunneled, "req/s", direct, map[string]any{
		"baseline_is":         "direct to the backend",
		"connections":         conns,
		"stock_one_hop":       stock,
		"stock_one_hop_ratio": stock / direct,
		"goal_ratio_min":      0.25,
		"gc_percent":          benchGCPercent,
	})
}

// BenchmarkLatencyAtFixedRate: 1,000 requests/s, open loop (latency is
// counted from each request's scheduled time, so a stall is not hidden),
// through proxy + tunnel and through a stock one-hop ReverseProxy.
func BenchmarkLatencyAtFixedRate(b *testing.B) {
	p := setupBenchPath(b)
	const rate = 1000
	// 9 interleaved one-second slices per path: a p99 over 9,000
	// requests, with the machine's swings shared by both paths.
	const rounds = 9
	const d = rounds * time.Second
	openLoop(b, p.proxy, rate, 300*time.Millisecond)
	openLoop(b, p.stock, rate, 300*time.Millisecond)
	var tun, stock []time.Duration
	for range rounds {
		tun = append(tun, openLoop(b, p.proxy, rate, d/rounds)...)
		stock = append(stock, openLoop(b, p.stock, rate, d/rounds)...)
	}
	for _, q := range []struct {
		name string
		p    float64
	}{{"p50", 0.50}, {"p99", 0.99}} {
		t, s := percentile(tun, q.p), percentile(stock, q.p)
		report(b, "proxy_tunnel_latency_"+q.name+"_at_1000rps", ms(t), "ms", ms(s), map[string]any{
			"baseline_is":    "stock one-hop httputil.ReverseProxy over plain TCP",
			"requests":       len(tun),
			"goal_ratio_max": 1.0,
		})
	}
}

// interleaved measures requests per second on each address in turn,
// rounds times, each slice lasting d, and returns the mean per address.
func interleaved(b *testing.B, addrs []string, conns, rounds int, d time.Duration) []float64 {
	sum := make([]float64, len(addrs))
	for range rounds {
		for i, a := range addrs {
			sum[i] += closedLoop(b, a, hostA, "/tiny", conns, d)
		}
	}
	for i := range sum {
		sum[i] /= float64(rounds)
	}
	return sum
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func percentile(lat []time.Duration, p float64) time.Duration {
	s := slices.Clone(lat)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// openLoop sends rate requests per second for d, each on a free
// keep-alive connection from a pool, and returns their latencies measured
// from their scheduled times.
func openLoop(b *testing.B, addr string, rate int, d time.Duration) []time.Duration {
	b.Helper()
	const poolSize = 64
	pool := make(chan *leanConn, poolSize)
	for range poolSize {
		lc, err := dialLean(addr, hostA, "/tiny")
		if err != nil {
			b.Fatal(err)
		}
		pool <- lc
	}
	total := int(d.Seconds() * float64(rate))
	interval := time.Second / time.Duration(rate)
	lat := make([]time.Duration, total)
	errs := make(chan error, total)
	done := make(chan struct{}, total)
	start := time.Now()
	for i := range total {
		at := start.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(at))
		lc := <-pool
		go func() {
			status, err := lc.do()
			lat[i] = time.Since(at)
			if err != nil || status != 200 {
				errs <- err
				lc.Close()
				if nc, derr := dialLean(addr, hostA, "/tiny"); derr == nil {
					lc = nc
				}
			}
			pool <- lc
			done <- struct{}{}
		}()
	}
	for range total {
		<-done
	}
	close(pool)
	for lc := range pool {
		lc.Close()
	}
	if len(errs) > 0 {
		b.Fatalf("%d requests failed against %s: %v", len(errs), addr, <-errs)
	}
	return lat
}

var _ net.Conn
