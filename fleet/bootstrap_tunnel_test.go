package fleet_test

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/agent/protocol"
	"github.com/stagely-dev/stagely/fleet"
	"github.com/stagely-dev/stagely/store/storetest"
	"github.com/stagely-dev/stagely/tunnel"
)

// The bootstrap token sits in the machine's user data (readable from the
// cloud's metadata service, and by the cloud account's users) long after
// the exchange. A tunnel opened with it must not displace the agent's own
// session, which serves the previews.
func TestASpentBootstrapTokenDoesNotDisplaceTheAgentsSession(t *testing.T) {
	db := storetest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	envID := newEnvironment(t, db)
	runningMachine(t, db, envID, "boot")
	tok := strings.Repeat("a", 64)
	x, err := (&fleet.Handler{DB: db}).Exchange(ctx, protocol.ExchangeRequest{BootstrapToken: "boot", AgentToken: tok})
	if err != nil {
		t.Fatal(err)
	}
	var hash string
	if err := db.NewRaw("SELECT hash FROM environments WHERE id = ?", envID).Scan(ctx, &hash); err != nil {
		t.Fatal(err)
	}
	primary := hash + ".preview.example"

	ca, err := tunnel.NewDevCA()
	if err != nil {
		t.Fatal(err)
	}
	tc, _ := ca.ServerConfig("127.0.0.1")
	srv, err := tunnel.NewServer(tunnel.ServerConfig{TLS: tc,
		Authenticator: &fleet.TunnelAuth{DB: db, PrimaryHost: func(h string) string { return h + ".preview.example" }}})
	if err != nil {
		t.Fatal(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ctx, ln)
	defer srv.Close()
	connect := func(token string) {
		a, err := tunnel.NewAgent(tunnel.AgentConfig{Addr: ln.Addr().String(), Token: token,
			TLS: &tls.Config{RootCAs: ca.Pool()}, Handler: tunnel.StreamHandlerFunc(func(_ context.Context, _ string, c net.Conn) { c.Close() }),
			Backoff: tunnel.Backoff{Min: time.Hour, Max: time.Hour}})
		if err != nil {
			t.Fatal(err)
		}
		go a.Run(ctx)
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		defer wcancel()
		if _, err := a.WaitConnected(wctx); err != nil {
			t.Fatal(err)
		}
	}

	// The proxy registers a session just after it answers the agent.
	serves := func() bool {
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if s, ok := srv.Lookup(x.AgentID); ok && s.Identity().Allows(primary) {
				return true
			}
		}
		return false
	}
	connect(tok) // the real agent
	if !serves() {
		t.Fatalf("the agent's own session does not serve %s", primary)
	}
	connect("boot") // anyone who read the user data
	time.Sleep(100 * time.Millisecond)
	if s, ok := srv.Lookup(x.AgentID); !ok || !s.Identity().Allows(primary) {
		var hosts []string
		if ok {
			hosts = s.Identity().Hostnames
		}
		t.Errorf("after a tunnel with the spent bootstrap token, agent %s's current session grants %v: %s no longer reaches the agent", x.AgentID, hosts, primary)
	}
}
