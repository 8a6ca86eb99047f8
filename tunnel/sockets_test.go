package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// socket is one TCP socket of this process, from /proc/self/net/tcp*.
type socket struct {
	Local  string `json:"local"`
	Listen bool   `json:"listen"`
}

// processSockets lists the TCP sockets this process holds: the kernel's
// table of the network namespace, kept to the inodes that
// /proc/self/fd links to.
func processSockets() ([]socket, error) {
	inodes := map[string]bool{}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	var out []socket
	for _, table := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		f, err := os.Open(table)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || !inodes[fields[9]] {
				continue
			}
			out = append(out, socket{Local: decodeProcAddr(fields[1]), Listen: fields[3] == "0A"})
		}
		f.Close()
	}
	return out, nil
}

// decodeProcAddr turns "0100007F:1F90" into "127.0.0.1:8080".
func decodeProcAddr(s string) string {
	hexIP, hexPort, _ := strings.Cut(s, ":")
	raw, _ := hex.DecodeString(hexIP)
	// The kernel prints each 32-bit word in host (little-endian) order.
	for i := 0; i+4 <= len(raw); i += 4 {
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	port, _ := strconv.ParseUint(hexPort, 16, 16)
	return net.JoinHostPort(net.IP(raw).String(), strconv.Itoa(int(port)))
}

func isLoopback(hostport string) bool {
	host, _, _ := net.SplitHostPort(hostport)
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

const childEnv = "STAGELY_TUNNEL_TEST_AGENT_CHILD"

// TestAgentHoldsNoListeningSocket runs an agent alone in a child process,
// has it serve a preview stream (so it has dialled both the proxy and a
// service), and then lists the child's sockets: none may be listening on
// a non-loopback address (in fact none listens at all).
func TestAgentHoldsNoListeningSocket(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		return // the child's work is in TestMain's helper below
	}
	// The listing itself works: this process's own listener shows up.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	mine, err := processSockets()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range mine {
		found = found || (s.Listen && s.Local == ln.Addr().String())
	}
	if !found {
		t.Fatalf("socket listing did not find this process's listener %s in %v", ln.Addr(), mine)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()

	ts := startServer(t, ServerConfig{})
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ts.ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestAgentHoldsNoListeningSocket$")
	cmd.Env = append(os.Environ(), childEnv+"=1", "CHILD_PROXY="+ts.addr, "CHILD_CA="+caFile, "CHILD_TARGET="+ln.Addr().String())
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sess := waitSession(t, ts, idA.Agent, 0)
	c, err := sess.OpenPreview(ctxT(t, 5*time.Second), "a.preview.test")
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "through\n")
	if got := readLine(t, c); got != "through" {
		t.Fatalf("echo through the child agent: %q", got)
	}
	// The stream is open, so the child holds a connection to the service.
	io.WriteString(stdin, "list\n")
	var socks []socket
	if err := json.NewDecoder(stdout).Decode(&socks); err != nil {
		t.Fatalf("child's socket list: %v", err)
	}
	c.Close()
	stdin.Close()
	cmd.Wait()
	if len(socks) < 2 {
		t.Fatalf("child lists %d sockets, want its proxy and service connections at least: %v", len(socks), socks)
	}
	for _, s := range socks {
		if s.Listen && !isLoopback(s.Local) {
			t.Errorf("agent listens on non-loopback %s", s.Local)
		}
		if s.Listen {
			t.Errorf("agent listens on %s (even loopback is not expected)", s.Local)
		}
	}
}

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(agentChild())
	}
	os.Exit(m.Run())
}

// agentChild runs an agent; on "list" from stdin it prints its sockets.
func agentChild() int {
	pem, err := os.ReadFile(os.Getenv("CHILD_CA"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pool, _ := CAPool(pem)
	a, err := NewAgent(AgentConfig{
		Addr:    os.Getenv("CHILD_PROXY"),
		Token:   "token-a",
		TLS:     &tls.Config{RootCAs: pool},
		Handler: &Forward{Targets: map[string]string{"a.preview.test": os.Getenv("CHILD_TARGET")}},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.Run(ctx)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		socks, err := processSockets()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		json.NewEncoder(os.Stdout).Encode(socks)
	}
	return 0
}
