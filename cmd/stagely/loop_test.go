package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"github.com/stagely-dev/stagely/agent"
	"github.com/stagely-dev/stagely/cmd/stagely/example"
	"github.com/stagely-dev/stagely/ghsim"
)

// get fetches a preview URL through the proxy: *.localhost names resolve
// to the loopback, so the test dials the URL's port there, as a browser on
// this machine would.
func get(t testing.TB, raw string) (int, string) {
	t.Helper()
	return getTLS(t, raw, nil)
}

// getTLS is get for an https preview URL, whose certificate is verified
// against roots (nil: the system's).
func getTLS(t testing.TB, raw string, roots *x509.CertPool) (int, string) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, net.JoinHostPort("127.0.0.1", u.Port()))
		},
	}}
	resp, err := c.Get(raw)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestWholeLoopOnTheLocalProvider drives one pull request through its
// life on real parts: the simulator's webhooks, the server with its
// in-process proxy, an agent started by the local provider, the Docker
// engine building and running the example app.
func TestWholeLoopOnTheLocalProvider(t *testing.T) {
	ctx := context.Background()
	bin, err := example.Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, example.Files(bin, "hello from the first commit"))
	cfg := w.config(2)
	cfg.fleet = fleetConfig{provider: "local", dataDir: loopDataDir(t), previewDomain: "preview.localhost",
		proxyAddr: "127.0.0.1:0", tunnelAddr: "127.0.0.1:0"}
	t.Cleanup(func() { sweepLeftovers(t, w, filepath.Join(cfg.fleet.dataDir, "machines")) })
	stop := w.serveConfig(cfg)
	defer stop()

	pr := w.openPR("feature")
	run := w.completed(pr.SHA, "success", 4*time.Minute)
	if !strings.Contains(run.DetailsURL, ".preview.localhost:") {
		t.Fatalf("details_url %q is not a preview URL", run.DetailsURL)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		code, body := get(t, run.DetailsURL)
		return code == 200 && strings.Contains(body, "hello from the first commit"), body
	})
	env := w.environment(pr.Number)
	project := agent.ProjectName(idString(env.ID))

	// No port of the app is published on the host.
	dc, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	byProject := filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+project))
	cs, err := dc.ContainerList(ctx, container.ListOptions{All: true, Filters: byProject})
	if err != nil || len(cs) != 2 {
		t.Fatalf("containers of %s: %d, %v", project, len(cs), err)
	}
	for _, c := range cs {
		for _, p := range c.Ports {
			if p.PublicPort != 0 {
				t.Errorf("container %s publishes port %d on the host", c.Names[0], p.PublicPort)
			}
		}
	}

	// A push redeploys the same URL with the new version, and a preview
	// it adds is served at its own URL, by the machine already running.
	withAPI := strings.Replace(example.Config, "    port: 8080\n", "    port: 8080\n  - name: api\n    service: backend\n    port: 9000\n", 1)
	push, err := w.sim.PushToPR(ctx, ghsim.PushSpec{Owner: owner, Repo: repoName, Number: pr.Number,
		Files: map[string]string{"backend/message.txt": "hello from the second commit\n", ".stagely.yml": withAPI}})
	if err != nil {
		t.Fatal(err)
	}
	run2 := w.completed(push.SHA, "success", 4*time.Minute)
	if run2.DetailsURL != run.DetailsURL {
		t.Errorf("the preview moved from %s to %s", run.DetailsURL, run2.DetailsURL)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		code, body := get(t, run.DetailsURL)
		return code == 200 && strings.Contains(body, "second commit"), body
	})
	apiURL := strings.Replace(run.DetailsURL, "://"+env.Hash+".", "://"+env.Hash+"-api.", 1)
	if s := w.sticky(pr.Number); len(s) != 1 || !strings.Contains(s[0].Body, apiURL) {
		t.Errorf("the sticky comment does not give the added preview's URL %s", apiURL)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		code, body := get(t, apiURL)
		return code == 200 && strings.TrimSpace(body) == "hello from the second commit", fmt.Sprintf("%s answers %d %q", apiURL, code, body)
	})

	// `/stagely redeploy` and the Redeploy button each redeploy, on the
	// same machine.
	c := w.comment(pr.Number, "alice", "write", "/stagely redeploy")
	eventually(t, 3*time.Minute, func() (bool, string) {
		r := w.reactions(c.ID)
		return strings.Join(r, ",") == "eyes,rocket", "reactions " + strings.Join(r, ",")
	})
	runs := w.runs(push.SHA)
	if len(runs) != 2 || runs[1].Conclusion != "success" {
		t.Fatalf("after /stagely redeploy, runs on the head: %s", describeRuns(runs))
	}
	if _, err := w.sim.ClickCheckRunAction(ctx, owner, repoName, runs[1].ID, "redeploy", "alice"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Minute, func() (bool, string) {
		rs := w.runs(push.SHA)
		return len(rs) == 3 && rs[2].Conclusion == "success", "after the Redeploy button: " + describeRuns(rs)
	})
	if code, body := get(t, run.DetailsURL); code != 200 || !strings.Contains(body, "second commit") {
		t.Errorf("after the redeploys the preview answers %d %q", code, body)
	}
	var machines int
	if err := w.db.NewRaw("SELECT count(*) FROM agents").Scan(ctx, &machines); err != nil || machines != 1 {
		t.Errorf("%d machines for one environment (%v), want 1", machines, err)
	}

	// Closing the pull request destroys everything.
	if _, err := w.sim.ClosePR(ctx, owner, repoName, pr.Number, false, "octocat"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, func() (bool, string) {
		s := w.sticky(pr.Number)
		return len(s) == 1 && strings.Contains(s[0].Body, "Stagely preview: destroyed"), "not destroyed yet"
	})
	for _, u := range []string{run.DetailsURL, apiURL} {
		eventually(t, 10*time.Second, func() (bool, string) {
			code, _ := get(t, u)
			return code == http.StatusNotFound, fmt.Sprintf("%s answers %d, want 404", u, code)
		})
	}
	if left, err := projectLeft(ctx, dc, project); err != nil || left != "" {
		t.Errorf("left after destroy: %s (%v)", left, err)
	}
}

// projectLeft says what Docker still holds of a compose project: "" when
// nothing.
func projectLeft(ctx context.Context, dc *client.Client, project string) (string, error) {
	byProject := filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+project))
	cs, err := dc.ContainerList(ctx, container.ListOptions{All: true, Filters: byProject})
	if err != nil {
		return "", err
	}
	ns, err := dc.NetworkList(ctx, network.ListOptions{Filters: byProject})
	if err != nil {
		return "", err
	}
	vs, err := dc.VolumeList(ctx, volume.ListOptions{Filters: byProject})
	if err != nil {
		return "", err
	}
	if len(cs)+len(ns)+len(vs.Volumes) == 0 {
		return "", nil
	}
	return fmt.Sprintf("%d containers, %d networks, %d volumes", len(cs), len(ns), len(vs.Volumes)), nil
}

// loopDataDir is the server's data directory; STAGELY_TEST_KEEP_DATA keeps
// it (with the machines' logs) for a look after a failure.
func loopDataDir(t testing.TB) string {
	if d := os.Getenv("STAGELY_TEST_KEEP_DATA"); d != "" {
		return d
	}
	return t.TempDir()
}

// TestAgentsSurviveAServerRestart restarts the server between a deploy and
// a push: the running agent reconnects to the new process (same tunnel
// address, same CA) and deploys the push; nothing is provisioned twice.
func TestAgentsSurviveAServerRestart(t *testing.T) {
	ctx := context.Background()
	bin, err := example.Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, example.Files(bin, "before the restart"))
	cfg := w.config(2)
	cfg.fleet = fleetConfig{provider: "local", dataDir: loopDataDir(t), previewDomain: "preview.localhost",
		proxyAddr: freeAddr(t), tunnelAddr: freeAddr(t)}
	t.Cleanup(func() { sweepLeftovers(t, w, filepath.Join(cfg.fleet.dataDir, "machines")) })
	stop := w.serveConfig(cfg)
	pr := w.openPR("feature")
	run := w.completed(pr.SHA, "success", 4*time.Minute)
	stop()

	stop = w.serveConfig(cfg)
	defer stop()
	// The agent reconnects on its own and the preview is served again,
	// before anything is redeployed.
	eventually(t, 40*time.Second, func() (bool, string) {
		code, body := get(t, run.DetailsURL)
		return code == 200 && strings.Contains(body, "before the restart"), fmt.Sprintf("%d %s", code, body)
	})
	push, err := w.sim.PushToPR(ctx, ghsim.PushSpec{Owner: owner, Repo: repoName, Number: pr.Number,
		Files: map[string]string{"backend/message.txt": "after the restart\n"}})
	if err != nil {
		t.Fatal(err)
	}
	w.completed(push.SHA, "success", 4*time.Minute)
	eventually(t, 10*time.Second, func() (bool, string) {
		code, body := get(t, run.DetailsURL)
		return code == 200 && strings.Contains(body, "after the restart"), body
	})
	var machines int
	if err := w.db.NewRaw("SELECT count(*) FROM agents").Scan(ctx, &machines); err != nil || machines != 1 {
		t.Errorf("%d machines provisioned (%v), want 1", machines, err)
	}
	if _, err := w.sim.ClosePR(ctx, owner, repoName, pr.Number, false, "octocat"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, func() (bool, string) {
		var live int
		w.db.NewRaw("SELECT count(*) FROM agents WHERE destroyed_at IS NULL").Scan(ctx, &live)
		return live == 0, "machine not destroyed"
	})
}

// TestServersServeEachOthersPreviews runs two servers on one database and
// one Valkey, as scaled mode does behind a load balancer: a preview is
// served through either server's proxy, whichever holds its agent's
// tunnel, and its destroy is seen by both.
func TestServersServeEachOthersPreviews(t *testing.T) {
	ctx := context.Background()
	bin, err := example.Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, example.Files(bin, "served by either server"))
	w.valkey = valkeyURL()
	dataDir := loopDataDir(t) // one tunnel CA, as servers share a volume or a secret
	t.Cleanup(func() { sweepLeftovers(t, w, filepath.Join(dataDir, "machines")) })
	// A table of this test's own: agents are numbered per database.
	prefix := fmt.Sprintf("test:%d:route:", time.Now().UnixNano())
	server := func(domain string) serverConfig {
		cfg := w.config(1)
		cfg.fleet = fleetConfig{provider: "local", dataDir: dataDir, previewDomain: domain,
			proxyAddr: freeAddr(t), tunnelAddr: freeAddr(t), valkeyPrefix: prefix,
			hop: hopConfig{addr: freeAddr(t), secret: "a hop secret that both servers share"}}
		return cfg
	}
	var proxies []string
	for range 2 {
		cfg := server("preview.localhost")
		proxies = append(proxies, cfg.fleet.proxyAddr)
		w.serveConfig(cfg)
	}
	// A server that would route another domain is refused at its start:
	// the previews of agents connected to it would answer 404 everywhere.
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := runServer(sctx, server("previews.example.com"), w.logs, serverDeps{deployer: unavailableDeployer{}}); err == nil || !strings.Contains(err.Error(), "--preview-domain") {
		t.Errorf("a server with another preview domain on the same route table: %v, want a refusal naming --preview-domain", err)
	}

	pr := w.openPR("feature")
	run := w.completed(pr.SHA, "success", 4*time.Minute)
	u, err := url.Parse(run.DetailsURL)
	if err != nil {
		t.Fatal(err)
	}
	through := func(proxy string) string {
		_, port, _ := net.SplitHostPort(proxy)
		return "http://" + net.JoinHostPort(u.Hostname(), port) + "/"
	}
	for _, p := range proxies {
		eventually(t, 10*time.Second, func() (bool, string) {
			code, body := get(t, through(p))
			return code == 200 && strings.Contains(body, "served by either server"), fmt.Sprintf("through %s: %d %s", p, code, body)
		})
	}

	if _, err := w.sim.ClosePR(ctx, owner, repoName, pr.Number, false, "octocat"); err != nil {
		t.Fatal(err)
	}
	for _, p := range proxies {
		eventually(t, 2*time.Minute, func() (bool, string) {
			code, _ := get(t, through(p))
			return code == http.StatusNotFound, fmt.Sprintf("after the destroy, through %s: %d, want 404", p, code)
		})
	}
}
