package fleet_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/agent/protocol"
	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/fleet"
	"github.com/stagely-dev/stagely/kv"
	"github.com/stagely-dev/stagely/provisioner"
	"github.com/stagely-dev/stagely/proxy"
	"github.com/stagely-dev/stagely/reconciler"
	"github.com/stagely-dev/stagely/repoconfig"
	"github.com/stagely-dev/stagely/store"
	"github.com/stagely-dev/stagely/store/storetest"
)

// machines is a Provider that records what it is asked and boots an
// in-process "agent" for each machine it creates.
type machines struct {
	mu      sync.Mutex
	created map[string]provisioner.Spec // by key
	gone    map[string]bool
	boot    func(spec provisioner.Spec)
}

func (m *machines) Create(ctx context.Context, s provisioner.Spec) (provisioner.Machine, error) {
	m.mu.Lock()
	_, seen := m.created[s.Key]
	m.created[s.Key] = s
	m.mu.Unlock()
	if !seen && m.boot != nil {
		go m.boot(s)
	}
	return provisioner.Machine{ID: "m-" + s.Key, EnvironmentID: s.EnvironmentID, Key: s.Key, State: provisioner.StateRunning}, nil
}

func (m *machines) State(ctx context.Context, id string) (provisioner.State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.gone[id] {
		return provisioner.StateTerminated, nil
	}
	return provisioner.StateRunning, nil
}

func (m *machines) Destroy(ctx context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gone[id] = true
	return nil
}

func (m *machines) List(ctx context.Context) ([]provisioner.Machine, error) { return nil, nil }

type tarballs struct{}

func (tarballs) Tarball(ctx context.Context, inst int64, owner, repo, sha string) (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader("tarball of " + sha)), nil
}

// pipeClient is an agent's protocol client whose streams reach h.
// bootedClient is the agent of the machine made with spec: it trades the
// bootstrap token in the machine's user data for token, as an agent does
// at its first start.
func bootedClient(ctx context.Context, h protocol.Handler, spec provisioner.Spec, token string) (*protocol.Client, error) {
	boot, err := provisioner.ParseCloudInit(spec.UserData)
	if err != nil {
		return nil, err
	}
	c := pipeClient(ctx, h)
	if _, err := c.Exchange(ctx, protocol.ExchangeRequest{BootstrapToken: boot.BootstrapToken, AgentToken: token}); err != nil {
		return nil, err
	}
	c.Token = token
	return c, nil
}

func pipeClient(ctx context.Context, h protocol.Handler) *protocol.Client {
	srv := &protocol.Server{Handler: h, MaxWait: 2 * time.Second}
	return &protocol.Client{Dial: func(context.Context) (io.ReadWriteCloser, error) {
		a, b := net.Pipe()
		go srv.ServeStream(ctx, b)
		return a, nil
	}}
}

func TestDeployHandsTheAgentItsDeploymentAndFollowsItsReports(t *testing.T) {
	db := storetest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bus := kv.NewMemory()
	h := &fleet.Handler{DB: db, Bus: bus, Tarballs: tarballs{}, Recheck: 50 * time.Millisecond}

	var got struct {
		sync.Mutex
		deployment *protocol.Deployment
		source     string
	}
	agent := func(spec provisioner.Spec) {
		c, err := bootedClient(ctx, h, spec, strings.Repeat("a", 64))
		if err != nil {
			t.Error(err)
			return
		}
		var after int64
		for ctx.Err() == nil {
			d, err := c.Poll(ctx, after, time.Second)
			if err != nil || d == nil {
				continue
			}
			after = d.Generation
			if d.Action == protocol.ActionDestroy {
				now := time.Now()
				c.Step(ctx, protocol.StepReport{EnvironmentID: d.EnvironmentID, Generation: d.Generation, Name: "down", State: protocol.StepSucceeded, Started: now, Finished: now})
				continue
			}
			src, err := c.Source(ctx, protocol.SourceRequest{EnvironmentID: d.EnvironmentID, Generation: d.Generation})
			if err != nil {
				t.Error(err)
				return
			}
			b, _ := io.ReadAll(src)
			src.Close()
			got.Lock()
			got.deployment, got.source = d, string(b)
			got.Unlock()
			now := time.Now()
			for _, name := range []string{"source", "compose", "up", "health"} {
				state := protocol.StepSucceeded
				if d.SHA == "badbad" && name == "up" {
					state = protocol.StepFailed
				}
				c.Step(ctx, protocol.StepReport{EnvironmentID: d.EnvironmentID, Generation: d.Generation, Name: name, State: state, Started: now, Finished: now, Message: "exit code 1"})
				if state == protocol.StepFailed {
					break
				}
			}
		}
	}
	prov := &machines{created: map[string]provisioner.Spec{}, gone: map[string]bool{}, boot: agent}
	routes := proxy.NewMemory()
	d := &fleet.Deployer{
		DB: db, Bus: bus, Provider: prov, ProviderName: "test", Secret: []byte("0123456789abcdef0123456789abcdef"),
		Boot: provisioner.CloudInit{ServerURL: "https://stagely.example", ProxyAddr: "proxy.example:7443", AgentURL: "https://stagely.example/agent", AgentSHA256: strings.Repeat("0", 64)},
		PreviewHost: func(hash, name string, first bool) string {
			if first {
				return hash + ".preview.example"
			}
			return hash + "-" + name + ".preview.example"
		},
		PreviewURL:   func(host string) string { return "https://" + host },
		Launch:       provisioner.Wait{Timeout: 5 * time.Second, Interval: 10 * time.Millisecond},
		AgentTimeout: 5 * time.Second, Recheck: 50 * time.Millisecond,
		Routes: routes,
	}

	envID := newEnvironment(t, db)
	cfg, err := repoconfig.Parse([]byte("version: 1\npreviews:\n  - name: web\n    service: web\n    port: 8080\n  - name: api\n    service: api\n    port: 9000\n"))
	if err != nil {
		t.Fatal(err)
	}
	// What the proxy publishes of the agent's grants once it connects.
	webHost, apiHost := "abc123.preview.example", "abc123-api.preview.example"
	for _, h := range []string{webHost, apiHost} {
		if err := routes.PutHost(ctx, h, strconv.FormatInt(envID, 10), "1", 0); err != nil {
			t.Fatal(err)
		}
	}
	target := reconciler.Target{EnvironmentID: envID, InstallationID: 1, Owner: "o", Repo: "r", PR: 1, Hash: "abc123"}
	var reported [][]checks.Step
	res, err := d.Deploy(ctx, reconciler.DeployRequest{Target: target, SHA: "deadbeef", Generation: 1, Config: cfg},
		func(s []checks.Step) { reported = append(reported, s) })
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Previews) != 2 || res.Previews[0].URL != "https://abc123.preview.example" {
		t.Errorf("previews %+v", res.Previews)
	}
	got.Lock()
	if got.deployment == nil || got.deployment.SHA != "deadbeef" || got.deployment.Previews[0].Service != "web" || got.source != "tarball of deadbeef" {
		t.Errorf("agent got %+v with source %q", got.deployment, got.source)
	}
	got.Unlock()
	last := reported[len(reported)-1]
	if len(last) != 5 || last[0].Name != fleet.StepProvision || last[4].Name != "health" || last[4].State != checks.StepSucceeded {
		t.Errorf("last progress %+v", last)
	}

	// A redeploy that fails reuses the machine and reports the agent's
	// failing step.
	_, err = d.Deploy(ctx, reconciler.DeployRequest{Target: target, SHA: "badbad", Generation: 2, Config: cfg}, func([]checks.Step) {})
	var de *reconciler.DeployError
	if !errors.As(err, &de) || de.Step != "up" || !strings.Contains(de.Reason, "exit code 1") {
		t.Errorf("failing deploy: %v, want a DeployError for step up", err)
	}
	if n := len(prov.created); n != 1 {
		t.Errorf("%d machines created for one environment, want 1", n)
	}
	if _, err := routes.Resolve(ctx, apiHost); err != nil {
		t.Errorf("after a failed deploy, the preview the last good one serves: %v", err)
	}

	// A deploy that drops a preview drops its route: it answers 404, not
	// 502 until the destroy.
	webOnly, err := repoconfig.Parse([]byte("version: 1\npreviews:\n  - name: web\n    service: web\n    port: 8080\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Deploy(ctx, reconciler.DeployRequest{Target: target, SHA: "cafe", Generation: 3, Config: webOnly}, func([]checks.Step) {}); err != nil {
		t.Fatal(err)
	}
	if r, err := routes.Resolve(ctx, apiHost); !errors.Is(err, proxy.ErrNoRoute) {
		t.Errorf("the dropped preview still routes: %+v, %v", r, err)
	}
	if _, err := routes.Resolve(ctx, webHost); err != nil {
		t.Errorf("the kept preview: %v", err)
	}

	// Destroy asks the agent to tear down and destroys the machine.
	if _, err := db.ExecContext(ctx, "UPDATE environments SET desired_state = 'destroyed', desired_generation = 4"); err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, target); err != nil {
		t.Fatal(err)
	}
	prov.mu.Lock()
	gone := len(prov.gone)
	prov.mu.Unlock()
	if gone != 1 {
		t.Errorf("%d machines destroyed, want 1", gone)
	}
	var live int
	if err := db.NewRaw("SELECT count(*) FROM agents WHERE destroyed_at IS NULL").Scan(ctx, &live); err != nil || live != 0 {
		t.Errorf("%d agents left live (%v)", live, err)
	}
}

func TestExchangeIsOnceButRepeatable(t *testing.T) {
	db := storetest.New(t)
	ctx := context.Background()
	envID := newEnvironment(t, db)
	if _, err := db.ExecContext(ctx, `INSERT INTO agents (environment_id, attempt, key, provider, bootstrap_hash)
VALUES (?, 1, 'env-1', 'test', encode(sha256('boot'), 'hex'))`, envID); err != nil {
		t.Fatal(err)
	}
	h := &fleet.Handler{DB: db}
	a, b := strings.Repeat("a", 64), strings.Repeat("b", 64)
	if _, err := h.Exchange(ctx, protocol.ExchangeRequest{BootstrapToken: "boot", AgentToken: a}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Exchange(ctx, protocol.ExchangeRequest{BootstrapToken: "boot", AgentToken: a}); err != nil {
		t.Errorf("repeated exchange after a crash: %v", err)
	}
	if _, err := h.Exchange(ctx, protocol.ExchangeRequest{BootstrapToken: "boot", AgentToken: b}); !errors.Is(err, protocol.ErrTokenUsed) {
		t.Errorf("second agent token: %v, want ErrTokenUsed", err)
	}
	if _, err := h.Exchange(ctx, protocol.ExchangeRequest{BootstrapToken: "wrong", AgentToken: b}); !errors.Is(err, protocol.ErrUnauthorized) {
		t.Errorf("unknown bootstrap token: %v, want ErrUnauthorized", err)
	}
	id, err := h.Authenticate(ctx, a)
	if err != nil || id.EnvironmentID != strconv.FormatInt(envID, 10) {
		t.Errorf("authenticate = %+v, %v", id, err)
	}
	if _, err := h.Authenticate(ctx, b); !errors.Is(err, protocol.ErrUnauthorized) {
		t.Errorf("unknown agent token: %v", err)
	}
}

func newEnvironment(t *testing.T, db *bun.DB) int64 { return newEnvironmentFor(t, db, 1) }

// newEnvironmentFor makes the environment of pull request pr.
func newEnvironmentFor(t *testing.T, db *bun.DB, pr int) int64 {
	t.Helper()
	in := store.PullRequestIntent{Repo: store.RepoRef{InstallationID: 1, RepositoryID: 2, Owner: "o", Name: "r"},
		PRNumber: pr, HeadSHA: "deadbeef", Desired: store.DesiredRunning, UpdatedAt: time.Now()}
	id, _, err := store.DeliverPullRequest(context.Background(), db, store.Delivery{ID: "d" + strconv.Itoa(pr), Event: "pull_request"}, in)
	if err != nil || id == 0 {
		t.Fatalf("environment: %d, %v", id, err)
	}
	return id
}

// runningMachine records a running machine for environment env whose
// agent has yet to trade bootstrap for its token.
func runningMachine(t *testing.T, db *bun.DB, env int64, bootstrap string) {
	t.Helper()
	if _, err := db.ExecContext(context.Background(), `INSERT INTO agents (environment_id, attempt, key, provider, bootstrap_hash, state)
VALUES (?, 1, 'env-1', 'test', encode(sha256(?::bytea), 'hex'), 'running')`, env, bootstrap); err != nil {
		t.Fatal(err)
	}
}

func TestDeployRefusesWhatItCannotGive(t *testing.T) {
	db := storetest.New(t)
	ctx := context.Background()
	prov := &machines{created: map[string]provisioner.Spec{}, gone: map[string]bool{}}
	d := &fleet.Deployer{
		DB: db, Bus: kv.NewMemory(), Provider: prov, ProviderName: "hetzner", Secret: []byte("0123456789abcdef0123456789abcdef"),
		Boot:        provisioner.CloudInit{ServerURL: "https://stagely.example", ProxyAddr: "proxy.example:7443", AgentURL: "https://stagely.example/agent", AgentSHA256: strings.Repeat("0", 64)},
		PreviewHost: func(hash, name string, first bool) string { return hash + ".preview.example" },
		PreviewURL:  func(host string) string { return "https://" + host },
		Launch:      provisioner.Wait{Timeout: time.Second, Interval: 10 * time.Millisecond},
	}
	tests := []struct {
		name    string
		yml     string
		refused bool
	}{
		{"another provider", "provider: {name: aws, size: t3.large}\n", true},
		{"local asked of a cloud server", "provider: {name: local}\n", true},
		{"the server's own provider", "provider: {name: hetzner, size: cx32}\n", false},
		{"no provider", "", false},
		{"secrets, which this server cannot hold", "secrets: [API_KEY, DB_PASSWORD]\n", true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := repoconfig.Parse([]byte("version: 1\n" + tt.yml + "previews:\n  - name: web\n    service: web\n    port: 8080\n"))
			if err != nil {
				t.Fatal(err)
			}
			prov.mu.Lock()
			clear(prov.created)
			prov.mu.Unlock()
			target := reconciler.Target{EnvironmentID: newEnvironmentFor(t, db, i+1), InstallationID: 1, Owner: "o", Repo: "r", PR: i + 1, Hash: "abc123"}
			dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			_, err = d.Deploy(dctx, reconciler.DeployRequest{Target: target, SHA: "deadbeef", Generation: 1, Config: cfg}, func([]checks.Step) {})
			var de *reconciler.DeployError
			refused := errors.As(err, &de) && de.Step == fleet.StepProvision &&
				(strings.Contains(de.Reason, "this Stagely server makes hetzner machines") || strings.Contains(de.Reason, "secrets (API_KEY, DB_PASSWORD)"))
			if refused != tt.refused {
				t.Fatalf("Deploy = %v; refused for the provider: %v, want %v", err, refused, tt.refused)
			}
			prov.mu.Lock()
			n := len(prov.created)
			prov.mu.Unlock()
			if tt.refused && (n != 0 || de.Retryable || de.Hint == "") {
				t.Errorf("refusal made %d machines, retryable %v, hint %q", n, de.Retryable, de.Hint)
			}
			if !tt.refused && n != 1 {
				t.Errorf("%d machines asked for, want 1", n)
			}
		})
	}
}
