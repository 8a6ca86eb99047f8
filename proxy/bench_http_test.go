package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/tunnel"
	"golang.org/x/sys/unix"
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
	// relay is a bare TCP relay in front of the stock proxy: the cheapest
	// path with as many hops as proxy + tunnel, which no two-hop path can
	// beat, so the latency lines say how much of their gap to the stock
	// one hop is the hop itself.
	relay string
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
	return benchPath{backend: be.addr, proxy: n.public, stock: ln.Addr().String(),
		relay: bareRelay(b, ln.Addr().String())}
}

// bareRelay relays connections to addr: no parsing, no TLS, no pool.
func bareRelay(b *testing.B, addr string) string {
	ln := listen(b)
	go relay(ln, addr, io.Discard)
	return ln.Addr().String()
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
//
// The load comes from another process, as clients of a proxy do: a
// generator in this process would share its scheduler with the proxy
// and the agent, so that every handoff on the measured paths could wait
// behind the generator's own goroutines.
func BenchmarkLatencyAtFixedRate(b *testing.B) {
	p := setupBenchPath(b)
	const rate = 1000
	// Many short slices, alternating between the paths, so that a pause of
	// the machine (a GC, another process on its two cores) falls on all
	// alike: 180 slices of 100 ms per path, a p99 over 18,000 requests.
	const (
		rounds = 180
		slice  = 100 * time.Millisecond
	)
	lat := latencyFromChild(b, []string{p.proxy, p.stock, p.relay}, rate, rounds, slice)
	tun, stock, floor := lat[0], lat[1], lat[2]
	for _, q := range []struct {
		name string
		p    float64
		goal map[string]any
	}{
		// Two hops and TLS cost more than one at the median; the goal is
		// on the tail, which a user notices.
		{"p50", 0.50, nil},
		{"p99", 0.99, map[string]any{"goal_ratio_max": 1.0}},
	} {
		t, s, f := percentile(tun, q.p), percentile(stock, q.p), percentile(floor, q.p)
		lo, hi := ratioInterval(tun, stock, rounds, q.p, 400, rand.New(rand.NewPCG(1, 2)))
		flo, fhi := ratioInterval(floor, stock, rounds, q.p, 400, rand.New(rand.NewPCG(3, 4)))
		extra := map[string]any{
			"baseline_is": "stock one-hop httputil.ReverseProxy over plain TCP",
			"requests":    len(tun),
			"load_from":   "another process, 64 keep-alive connections per path",
			"ratio_ci90":  []float64{round(lo), round(hi)},
			// The same stock proxy behind a bare TCP relay: one more hop
			// that does no work, the least any two-hop path costs.
			"two_hop_floor_ms":         ms(f),
			"two_hop_floor_ratio":      f.Seconds() / s.Seconds(),
			"two_hop_floor_ratio_ci90": []float64{round(flo), round(fhi)},
			"ratio_to_two_hop_floor":   t.Seconds() / f.Seconds(),
		}
		maps.Copy(extra, q.goal)
		report(b, "proxy_tunnel_latency_"+q.name+"_at_1000rps", ms(t), "ms", ms(s), extra)
	}
}

// loadChildEnv makes the test binary a load generator (loadChild).
const loadChildEnv = "STAGELY_PROXY_BENCH_LOAD_CHILD"

// loadPlan is what the parent asks of the load generator: rate requests
// per second to each address in turn, rounds times, for slice each time.
type loadPlan struct {
	Addrs  []string
	Rate   int
	Rounds int
	Slice  time.Duration
}

// latencyFromChild runs the load generator in a child process and returns
// the latencies it measured, one slice per address.
func latencyFromChild(b *testing.B, addrs []string, rate, rounds int, slice time.Duration) [][]time.Duration {
	b.Helper()
	plan, err := json.Marshal(loadPlan{Addrs: addrs, Rate: rate, Rounds: rounds, Slice: slice})
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), loadChildEnv+"="+string(plan), "GOMAXPROCS=2")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("load generator: %v: %s", err, stderr.Bytes())
	}
	var lat [][]time.Duration
	if err := json.Unmarshal(out, &lat); err != nil || len(lat) != len(addrs) {
		b.Fatalf("load generator's answer (%d bytes): %v", len(out), err)
	}
	return lat
}

// loadChild is the body of the load generator process: it runs the plan
// in its environment and prints the latencies as JSON.
func loadChild() int {
	var plan loadPlan
	if err := json.Unmarshal([]byte(os.Getenv(loadChildEnv)), &plan); err != nil {
		fmt.Fprintln(os.Stderr, "load plan:", err)
		return 1
	}
	gens := make([]*openLoop, len(plan.Addrs))
	for i, a := range plan.Addrs {
		g, err := newOpenLoop(a)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer g.close()
		gens[i] = g
	}
	lat := make([][]time.Duration, len(gens))
	for _, g := range gens { // warm up
		if _, err := g.run(plan.Rate, 300*time.Millisecond); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	for range plan.Rounds {
		for i, g := range gens {
			l, err := g.run(plan.Rate, plan.Slice)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			lat[i] = append(lat[i], l...)
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(lat); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
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

// ratioInterval is a 90% bootstrap interval for the ratio of a's and b's
// p-quantiles, each made of rounds equal slices measured in turn. A tail
// quantile is made of the machine's rare stalls, and how many fall on
// each path varies from run to run: the interval says whether a ratio
// near 1 is a difference between the paths or only that. The slices are
// resampled in pairs, since a[i] and b[i] ran back to back and share the
// machine's state.
func ratioInterval(a, b []time.Duration, rounds int, p float64, resamples int, rng *rand.Rand) (lo, hi float64) {
	n := len(a) / rounds
	ratios := make([]float64, resamples)
	ra, rb := make([]time.Duration, 0, n*rounds), make([]time.Duration, 0, n*rounds)
	for i := range ratios {
		ra, rb = ra[:0], rb[:0]
		for range rounds {
			k := rng.IntN(rounds)
			ra = append(ra, a[k*n:(k+1)*n]...)
			rb = append(rb, b[k*n:(k+1)*n]...)
		}
		ratios[i] = float64(percentile(ra, p)) / float64(percentile(rb, p))
	}
	slices.Sort(ratios)
	return ratios[resamples*5/100], ratios[resamples*95/100]
}

func percentile(lat []time.Duration, p float64) time.Duration {
	s := slices.Clone(lat)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// openLoop is an open-loop load generator for one address, with a pool
// of keep-alive connections kept from one run to the next, as a browser
// or a load balancer in front of the proxy keeps them.
type openLoop struct {
	addr string
	pool chan *leanConn
}

const openLoopConns = 64

func newOpenLoop(addr string) (*openLoop, error) {
	g := &openLoop{addr: addr, pool: make(chan *leanConn, openLoopConns)}
	for range openLoopConns {
		lc, err := dialLean(addr, hostA, "/tiny")
		if err != nil {
			g.close()
			return nil, err
		}
		g.pool <- lc
	}
	return g, nil
}

func (g *openLoop) close() {
	for {
		select {
		case lc := <-g.pool:
			lc.Close()
		default:
			return
		}
	}
}

// run sends rate requests per second for d, each on a free connection
// from the pool, and returns their latencies measured from their
// scheduled times.
//
// The schedule is kept on an OS thread of its own that sleeps in the
// kernel with a timer slack of 1 µs: time.Sleep wakes through the
// runtime's poller, whose timeout has a granularity of a millisecond, and
// would add up to that much of the generator's own lateness to every
// request, on both paths alike, hiding the difference between them.
func (g *openLoop) run(rate int, d time.Duration) ([]time.Duration, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("timer slack: %w", err)
	}
	total := int(d.Seconds() * float64(rate))
	interval := time.Second / time.Duration(rate)
	lat := make([]time.Duration, total)
	errs := make(chan error, total)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range total {
		at := start.Add(time.Duration(i) * interval)
		if wait := time.Until(at); wait > 0 {
			ts := unix.NsecToTimespec(int64(wait))
			for unix.Nanosleep(&ts, &ts) == unix.EINTR {
			}
		}
		lc := <-g.pool
		wg.Go(func() {
			status, err := lc.do()
			lat[i] = time.Since(at)
			if err != nil || status != 200 {
				errs <- fmt.Errorf("%s: status %d: %v", g.addr, status, err)
				lc.Close()
				if nc, derr := dialLean(g.addr, hostA, "/tiny"); derr == nil {
					lc = nc
				}
			}
			g.pool <- lc
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, fmt.Errorf("%d of %d requests failed: %w", len(errs), total, <-errs)
	}
	return lat, nil
}

func TestRatioIntervalTellsADifferenceFromNoise(t *testing.T) {
	const rounds, perSlice, runs = 40, 100, 10
	// latencies: a quick path most of the time, and now and then a stall
	// of a few milliseconds, as on a shared machine.
	latencies := func(seed uint64, scale float64) []time.Duration {
		rng := rand.New(rand.NewPCG(seed, 7))
		lat := make([]time.Duration, rounds*perSlice)
		for i := range lat {
			v := 0.3e6 + rng.ExpFloat64()*0.2e6
			if rng.Float64() < 0.03 {
				v += 2e6 + rng.Float64()*2e6
			}
			lat[i] = time.Duration(v * scale)
		}
		return lat
	}
	for _, c := range []struct {
		name  string
		scale float64 // of a's latencies against b's
	}{
		{"the same path twice", 1},
		{"a path half as fast", 1.5},
		{"a path a third faster", 0.67},
	} {
		t.Run(c.name, func(t *testing.T) {
			covered := 0
			for run := range uint64(runs) {
				a, b := latencies(2*run+1, c.scale), latencies(2*run+2, 1)
				lo, hi := ratioInterval(a, b, rounds, 0.99, 100, rand.New(rand.NewPCG(run, 4)))
				if lo <= c.scale && c.scale <= hi {
					covered++
				}
				if c.scale != 1 && lo <= 1 && 1 <= hi {
					t.Errorf("run %d: interval [%.3f, %.3f] cannot tell a ratio of %.2f from 1", run, lo, hi, c.scale)
				}
			}
			// A 90% interval holds the true ratio in about 9 runs of 10.
			if covered < 7 {
				t.Errorf("the interval held the true ratio %.2f in %d runs of %d", c.scale, covered, runs)
			}
		})
	}
}
