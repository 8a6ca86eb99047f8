package digitalocean

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/godo"

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
		Size:          "s-4vcpu-8gb",
		Region:        "ams3",
		Image:         "docker-20-04",
		UserData:      "#cloud-config\n# environment " + strconv.FormatInt(env, 10) + "\n",
		Tags:          map[string]string{"repo": "octo/app", "pr": "12", "stagely:key": "spoofed"},
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
					token = "dop_v1_revoked"
				}
				return newProvider(t, f, token)
			},
			Spec:      spec,
			UnknownID: "424242",
		}
	})
}

func TestDropletCarriesTagsAndIsCoveredByAFirewallWithNoInboundRule(t *testing.T) {
	f := newFakeCloud(t)
	p := newProvider(t, f, f.token)
	if _, err := p.Create(t.Context(), spec(5, 2)); err != nil {
		t.Fatal(err)
	}
	body := f.createBody[0]
	tags := body["tags"].([]any)
	var got []string
	for _, tag := range tags {
		got = append(got, tag.(string))
	}
	want := []string{"stagely", "stagely:env:5", "stagely:key:env5-2", "pr:12", "repo:octo_app"}
	if !slices.Equal(got, want) {
		t.Errorf("tags = %q, want %q", got, want)
	}
	if body["name"] != "stagely-env5-2" || body["monitoring"] != true {
		t.Errorf("create body = %v", body)
	}
	if len(f.firewalls) != 1 {
		t.Fatalf("%d firewalls", len(f.firewalls))
	}
	fw := f.firewalls[0]
	if fw.Name != "stagely-no-inbound" || len(fw.InboundRules) != 0 || !slices.Equal(fw.Tags, []string{"stagely"}) {
		t.Errorf("firewall = %+v; want no inbound rules, applied to tag stagely", fw)
	}
	var protocols []string
	for _, o := range fw.OutboundRules {
		protocols = append(protocols, o.Protocol)
		if !slices.Equal(o.Destinations.Addresses, []string{"0.0.0.0/0", "::/0"}) {
			t.Errorf("outbound rule %+v does not reach everywhere", o)
		}
	}
	if !slices.Equal(protocols, []string{"tcp", "udp", "icmp"}) {
		t.Errorf("outbound protocols %v", protocols)
	}

	if _, err := p.Create(t.Context(), spec(6, 1)); err != nil {
		t.Fatal(err)
	}
	if n := f.count("POST /v2/firewalls"); n != 1 {
		t.Errorf("%d firewalls created, want 1", n)
	}
}

func TestFirewallThatLetsTrafficInIsRefused(t *testing.T) {
	tests := []struct {
		name string
		fw   godo.Firewall
		want string
	}{
		{"inbound rule", godo.Firewall{ID: "fw-x", Name: "stagely-no-inbound", Tags: []string{"stagely"},
			InboundRules: []godo.InboundRule{{Protocol: "tcp", PortRange: "22", Sources: &godo.Sources{Addresses: []string{"0.0.0.0/0"}}}}}, "inbound rule (tcp ports 22)"},
		{"not applied to the tag", godo.Firewall{ID: "fw-y", Name: "stagely-no-inbound"}, "does not apply to tag stagely"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeCloud(t)
			f.firewalls = append(f.firewalls, &tt.fw)
			_, err := newProvider(t, f, f.token).Create(t.Context(), spec(5, 1))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if n := f.count("POST /v2/droplets"); n != 0 {
				t.Errorf("%d droplets created behind a bad firewall", n)
			}
		})
	}
}

func TestCreateWhoseAnswerIsLostMakesNoSecondDroplet(t *testing.T) {
	// The droplet is made but the answer is a 503: the retry finds it by its
	// key tag instead of sending the create again.
	f := newFakeCloud(t)
	f.dropAfterCreate = 1
	m, err := newProvider(t, f, f.token).Create(t.Context(), spec(5, 1))
	if err != nil {
		t.Fatal(err)
	}
	if n := f.count("POST /v2/droplets"); n != 1 {
		t.Errorf("%d creates sent, want 1", n)
	}
	if live := f.Live(); len(live) != 1 || live[0].ID != m.ID {
		t.Errorf("cloud holds %+v, Create returned %s", live, m.ID)
	}
}

func TestRateLimitIsRetriedAsOftenAsConfigured(t *testing.T) {
	f := newFakeCloud(t)
	f.Fail(contract.RateLimit, 1000)
	_, err := newProvider(t, f, f.token).List(t.Context())
	if !errors.Is(err, provisioner.ErrRateLimited) {
		t.Fatalf("err = %v", err)
	}
	if n := f.count("GET /v2/droplets"); n != fastRetry.Attempts {
		t.Errorf("%d tries, want %d", n, fastRetry.Attempts)
	}
}

func TestListFollowsPages(t *testing.T) {
	f := newFakeCloud(t)
	p := newProvider(t, f, f.token)
	for env := int64(1); env <= 205; env++ {
		f.mu.Lock()
		f.nextID++
		f.droplets[f.nextID] = &fakeDroplet{d: godo.Droplet{ID: f.nextID, Status: "active", Tags: []string{"stagely", p.envTag(env), p.keyTag(provisioner.Key(env, 1))},
			Region: &godo.Region{Slug: "fra1"}, Image: &godo.Image{Slug: "ubuntu-24-04-x64"}}}
		f.mu.Unlock()
	}
	list, err := p.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 205 {
		t.Fatalf("List returned %d machines, want 205", len(list))
	}
	if list[204].EnvironmentID != 205 || list[204].Key != "env205-1" {
		t.Errorf("last = %+v", list[204])
	}
}

func TestNewNamesTheMissingToken(t *testing.T) {
	t.Setenv("DIGITALOCEAN_TOKEN", "")
	t.Setenv("DIGITALOCEAN_ACCESS_TOKEN", "")
	_, err := New(Config{})
	if err == nil || !strings.Contains(err.Error(), "DIGITALOCEAN_TOKEN") {
		t.Fatalf("New without a token: %v", err)
	}
	t.Setenv("DIGITALOCEAN_TOKEN", "dop_v1_x")
	if _, err := New(Config{}); err != nil {
		t.Fatalf("New with DIGITALOCEAN_TOKEN: %v", err)
	}
}

func TestFirstCreateInAFreshAccountMakesTheFirewallTag(t *testing.T) {
	// No droplet carries the namespace tag yet, so the tag does not exist,
	// and DigitalOcean refuses a firewall that names a missing tag.
	f := newFakeCloud(t)
	if _, err := newProvider(t, f, f.token).Create(t.Context(), spec(5, 1)); err != nil {
		t.Fatal(err)
	}
	if !f.tags["stagely"] || len(f.firewalls) != 1 || !slices.Equal(f.firewalls[0].Tags, []string{"stagely"}) {
		t.Errorf("tags %v, firewalls %d; want tag stagely made and one firewall applied to it", f.tags, len(f.firewalls))
	}
}
