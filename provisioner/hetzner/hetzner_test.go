package hetzner

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"

	"github.com/stagely-dev/stagely/provisioner"
	"github.com/stagely-dev/stagely/provisioner/internal/contract"
)

var fastRetry = provisioner.Retry{Attempts: 4, MinWait: time.Millisecond, MaxWait: 5 * time.Millisecond}

func newProvider(t *testing.T, f *fakeCloud, token string) *Provider {
	t.Helper()
	p, err := New(Config{Token: token, Endpoint: f.srv.URL, Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func spec(env, attempt int64) provisioner.Spec {
	return provisioner.Spec{
		EnvironmentID: env,
		Key:           provisioner.Key(env, attempt),
		Size:          "cpx21",
		Region:        "nbg1",
		Image:         "ubuntu-22.04",
		UserData:      "#cloud-config\n# environment " + strconv.FormatInt(env, 10) + "\n",
		Tags:          map[string]string{"repo": "octo/app", "pr": "12", "stagely": "spoofed"},
	}
}

func TestContract(t *testing.T) {
	contract.Run(t, func(t *testing.T) contract.Harness {
		f := newFakeCloud(t)
		return contract.Harness{
			Cloud: f,
			New: func(t *testing.T, good bool) provisioner.Provider {
				token := f.token
				if !good {
					token = strings.Repeat("x", 64)
				}
				return newProvider(t, f, token)
			},
			Spec:      spec,
			UnknownID: "424242",
		}
	})
}

func TestServerCarriesLabelsAndAFirewallWithNoInboundRule(t *testing.T) {
	f := newFakeCloud(t)
	p := newProvider(t, f, f.token)
	m, err := p.Create(t.Context(), spec(5, 2))
	if err != nil {
		t.Fatal(err)
	}
	id, _ := strconv.ParseInt(m.ID, 10, 64)
	labels := f.labels(id)
	want := map[string]string{"stagely": "stagely", "stagely-environment": "5", "stagely-key": "env5-2", "repo": "octo_app", "pr": "12"}
	for k, v := range want {
		if labels[k] != v {
			t.Errorf("label %s = %q, want %q (all: %v)", k, labels[k], v, labels)
		}
	}
	fw := f.firewallOf(id)
	if fw == nil {
		t.Fatal("server created without a firewall")
	}
	if fw.Name != "stagely-no-inbound" || len(fw.Rules) != 0 {
		t.Errorf("firewall %s has rules %+v; want none (no inbound, all outbound)", fw.Name, fw.Rules)
	}

	// A second machine reuses the firewall rather than making another.
	if _, err := p.Create(t.Context(), spec(6, 1)); err != nil {
		t.Fatal(err)
	}
	if n := f.count("POST /firewalls"); n != 1 {
		t.Errorf("%d firewalls created, want 1", n)
	}
}

func TestFirewallWithAnInboundRuleIsRefused(t *testing.T) {
	f := newFakeCloud(t)
	port := "22"
	f.firewalls[1] = &schema.Firewall{ID: 1, Name: "stagely-no-inbound", Rules: []schema.FirewallRule{
		{Direction: "in", Protocol: "tcp", Port: &port, SourceIPs: []string{"0.0.0.0/0"}},
	}}
	_, err := newProvider(t, f, f.token).Create(t.Context(), spec(5, 1))
	if err == nil || !strings.Contains(err.Error(), "inbound rule (tcp port 22)") {
		t.Fatalf("err = %v, want a refusal naming the inbound rule", err)
	}
	if len(f.Live()) != 0 {
		t.Error("a server was created behind an open firewall")
	}
}

func TestCreateAfterANameClashReturnsTheExistingServer(t *testing.T) {
	// Another worker's create lands between this one's look-up and its
	// create: the name clash leads back to the same server.
	f := newFakeCloud(t)
	p := newProvider(t, f, f.token)
	first, err := p.Create(t.Context(), spec(5, 1))
	if err != nil {
		t.Fatal(err)
	}
	id, _ := strconv.ParseInt(first.ID, 10, 64)
	f.mu.Lock()
	saved := f.servers[id].s.Labels
	f.servers[id].s.Labels = map[string]string{"stagely": "stagely"} // hidden from the key look-up
	f.mu.Unlock()
	_, err = p.Create(t.Context(), spec(5, 1))
	if err == nil {
		t.Fatal("a second server with the same name was accepted")
	}
	f.mu.Lock()
	f.servers[id].s.Labels = saved
	f.mu.Unlock()
	again, err := p.Create(t.Context(), spec(5, 1))
	if err != nil || again.ID != first.ID {
		t.Fatalf("Create = %+v, %v; want %s", again, err, first.ID)
	}
}

func TestNewNamesTheMissingToken(t *testing.T) {
	t.Setenv("HCLOUD_TOKEN", "")
	_, err := New(Config{})
	if err == nil || !strings.Contains(err.Error(), "HCLOUD_TOKEN") {
		t.Fatalf("New without a token: %v", err)
	}
	t.Setenv("HCLOUD_TOKEN", strings.Repeat("t", 64))
	if _, err := New(Config{}); err != nil {
		t.Fatalf("New with HCLOUD_TOKEN set: %v", err)
	}
	if _, err := New(Config{Token: "x", Namespace: "Bad Namespace"}); err == nil {
		t.Fatal("New accepted a bad namespace")
	}
}

func TestUserDataOverTheLimitIsRefusedBeforeTheCloud(t *testing.T) {
	f := newFakeCloud(t)
	s := spec(5, 1)
	s.UserData = strings.Repeat("#", 33<<10)
	_, err := newProvider(t, f, f.token).Create(t.Context(), s)
	if !errors.Is(err, provisioner.ErrInvalidSpec) {
		t.Fatalf("err = %v", err)
	}
	if n := f.count("POST /servers"); n != 0 {
		t.Errorf("%d creates sent", n)
	}
}

func TestRateLimitIsRetriedAsOftenAsConfigured(t *testing.T) {
	f := newFakeCloud(t)
	f.Fail(contract.RateLimit, 1000)
	_, err := newProvider(t, f, f.token).List(t.Context())
	if !errors.Is(err, provisioner.ErrRateLimited) {
		t.Fatalf("err = %v", err)
	}
	if n := f.count("GET /servers"); n != fastRetry.Attempts {
		t.Errorf("%d tries, want %d", n, fastRetry.Attempts)
	}
}
