package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/stagely-dev/stagely/tunnel"
)

const (
	benchChildEnv = "STAGELY_PROXY_BENCH_AGENTS_CHILD"
	idleAgents    = 10_000
)

// BenchmarkIdleTunnelMemory connects 10,000 agents, from a child process,
// and measures the resident memory the proxy (this process) gains per
// idle tunnel; the baseline is the same with a stock yamux server over TLS
// (yamux.DefaultConfig, an accept loop per session), measured in this run.
func BenchmarkIdleTunnelMemory(b *testing.B) {
	raiseFileLimit(b)
	ca, err := tunnel.NewDevCA()
	if err != nil {
		b.Fatal(err)
	}
	caFile := b.TempDir() + "/ca.pem"
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		b.Fatal(err)
	}
	stock := measureIdle(b, "stock", ca, caFile)
	ours := measureIdle(b, "tunnel", ca, caFile)
	report(b, "proxy_idle_tunnel_memory", ours.perTunnel, "KiB/tunnel", stock.perTunnel, map[string]any{
		"baseline_is":                  "stock yamux (DefaultConfig) over TLS, accept loop per session",
		"tunnels":                      idleAgents,
		"goal_max":                     32,
		"heap_kib_per_tunnel":          ours.heapPer,
		"stock_heap_kib":               stock.heapPer,
		"goroutines_per_tunnel":        ours.goroutinesPer,
		"stock_goroutines":             stock.goroutinesPer,
		"measured_after":               "runtime.GC and debug.FreeOSMemory",
		"stack_kib_per_tunnel":         ours.stackPer,
		"stock_stack_kib":              stock.stackPer,
		"heap_inuse_kib_per_tunnel":    ours.heapInusePer,
		"stock_heap_inuse_kib":         stock.heapInusePer,
		"rss_before_gc_kib_per_tunnel": ours.rawPer,
		"stock_rss_before_gc_kib":      stock.rawPer,
	})
}

type idleResult struct {
	perTunnel, heapPer, goroutinesPer float64
	stackPer, heapInusePer, rawPer    float64
}

// measureIdle serves mode's server, has a child connect idleAgents
// clients, and returns what this process gained per connection.
func measureIdle(b *testing.B, mode string, ca *tunnel.DevCA, caFile string) idleResult {
	b.Helper()
	sc, err := ca.ServerConfig("127.0.0.1")
	if err != nil {
		b.Fatal(err)
	}
	ln := listen(b)
	count, stop := startIdleServer(b, mode, sc, ln)
	rss0, heap0, g0 := settledMemory()
	m0 := memStats()

	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), benchChildEnv+"="+mode, "CHILD_ADDR="+ln.Addr().String(), "CHILD_CA="+caFile,
		"CHILD_N="+strconv.Itoa(idleAgents), "GOMAXPROCS=2")
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() }()
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "ready" {
				ready <- nil
				return
			}
		}
		ready <- errors.New("child exited before all agents connected")
	}()
	select {
	case err := <-ready:
		if err != nil {
			b.Fatal(err)
		}
	case <-time.After(3 * time.Minute):
		b.Fatal("agents did not connect within 3 minutes")
	}
	deadline := time.Now().Add(time.Minute)
	for count() < idleAgents {
		if time.Now().After(deadline) {
			b.Fatalf("%s: %d of %d sessions registered", mode, count(), idleAgents)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(time.Second) // let handshake goroutines end
	raw1 := readRSS()
	rss1, heap1, g1 := settledMemory()
	m1 := memStats()

	stdin.Close()
	cmd.Process.Kill()
	cmd.Wait()
	stop()
	n := float64(idleAgents)
	return idleResult{
		perTunnel:     float64(rss1-rss0) / 1024 / n,
		heapPer:       float64(heap1-heap0) / 1024 / n,
		goroutinesPer: float64(g1-g0) / n,
		stackPer:      float64(m1.StackInuse-m0.StackInuse) / 1024 / n,
		heapInusePer:  float64(m1.HeapInuse-m0.HeapInuse) / 1024 / n,
		rawPer:        float64(raw1-rss0) / 1024 / n,
	}
}

// startIdleServer runs the proxy (mode "tunnel") or a stock yamux server
// (mode "stock") on ln; count reports sessions, stop ends them all.
func startIdleServer(b *testing.B, mode string, sc *tls.Config, ln net.Listener) (count func() int, stop func()) {
	if mode == "tunnel" {
		p, err := New(Config{
			PreviewDomain: "preview.test",
			TunnelTLS:     sc,
			Authenticator: tunnel.AuthenticatorFunc(func(_ context.Context, token string) (tunnel.Identity, error) {
				return tunnel.Identity{Agent: token, Environment: token, Hostnames: []string{token + ".preview.test"}}, nil
			}),
			Tunnel: tunnel.DefaultConfig(),
		})
		if err != nil {
			b.Fatal(err)
		}
		go p.ServeTunnel(context.Background(), ln)
		return p.Tunnel().NumSessions, p.Close
	}
	var mu sync.Mutex
	sessions := map[*yamux.Session]struct{}{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(c, sc)
				if err := tc.Handshake(); err != nil {
					c.Close()
					return
				}
				cfg := yamux.DefaultConfig()
				cfg.LogOutput = io.Discard
				s, err := yamux.Server(tc, cfg)
				if err != nil {
					c.Close()
					return
				}
				mu.Lock()
				sessions[s] = struct{}{}
				mu.Unlock()
				go func() { // the accept loop every server runs
					for {
						st, err := s.Accept()
						if err != nil {
							return
						}
						st.Close()
					}
				}()
			}()
		}
	}()
	count = func() int { mu.Lock(); defer mu.Unlock(); return len(sessions) }
	stop = func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for s := range sessions {
			s.Close()
		}
	}
	return count, stop
}

func memStats() runtime.MemStats {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms
}

// settledMemory collects garbage, returns freed pages to the kernel, and
// reads this process's resident set, live heap and goroutine count.
func settledMemory() (rss, heap uint64, goroutines int) {
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return readRSS(), ms.HeapAlloc, runtime.NumGoroutine()
}

func readRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

func raiseFileLimit(tb testing.TB) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		tb.Fatal(err)
	}
	l.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		tb.Fatal(err)
	}
	if l.Cur < idleAgents+1000 {
		tb.Fatalf("file descriptor limit %d is too low for %d tunnels", l.Cur, idleAgents)
	}
}

// benchAgentsChild is the child process: it connects CHILD_N clients of
// the given mode, prints "ready", and holds them until stdin closes.
func benchAgentsChild() int {
	var l syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	l.Cur = l.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	mode := os.Getenv(benchChildEnv)
	addr := os.Getenv("CHILD_ADDR")
	n, _ := strconv.Atoi(os.Getenv("CHILD_N"))
	pem, err := os.ReadFile(os.Getenv("CHILD_CA"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pool, err := tunnel.CAPool(pem)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	tc := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := connectIdle(mode, addr, tc, fmt.Sprintf("agent-%05d", i)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		fmt.Fprintf(os.Stderr, "%d of %d clients failed: %v\n", len(errs), n, <-errs)
		return 1
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

func connectIdle(mode, addr string, tc *tls.Config, token string) error {
	if mode == "stock" {
		c, err := tls.Dial("tcp", addr, tc)
		if err != nil {
			return err
		}
		cfg := yamux.DefaultConfig()
		cfg.LogOutput = io.Discard
		_, err = yamux.Client(c, cfg)
		return err
	}
	a, err := tunnel.NewAgent(tunnel.AgentConfig{
		Addr: addr, Token: token, TLS: tc,
		Handler: tunnel.StreamHandlerFunc(func(_ context.Context, _ string, c net.Conn) { c.Close() }),
	})
	if err != nil {
		return err
	}
	go a.Run(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = a.WaitConnected(ctx)
	return err
}
