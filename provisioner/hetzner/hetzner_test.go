package hetzner

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"

	"github.com/stagely-dev/stagely/provisioner"
	"github.com/stagely-dev/stagely/provisioner/hetzner/hetznerfake"
	"github.com/stagely-dev/stagely/provisioner/internal/contract"
)

var fastRetry = provisioner.Retry{Attempts: 4, MinWait: time.Millisecond, MaxWait: 5 * time.Millisecond}

func newProvider(t *testing.T, f *hetznerfake.Cloud, token string) *Provider {
	t.Helper()
	p, err := New(Config{Token: token, Endpoint: f.URL(), Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// count returns how many of the fake's requests were request, such as
// "POST /servers".
func count(f *hetznerfake.Cloud, request string) int {
	n := 0
	for _, r := range f.Requests() {
		if r == request {
			n++
		}
	}
	return n
}

// contractCloud is the fake as the contract sees it. It lives here rather
// than in hetznerfake because which machines are Stagely's (their labels)
// is this package's business.
type contractCloud struct{ *hetznerfake.Cloud }

var _ contract.Cloud = contractCloud{}

// Live returns Stagely's servers (default namespace) that are not deleted.
func (c contractCloud) Live() []contract.FakeMachine {
	var out []contract.FakeMachine
	for _, s := range c.Servers() {
		if s.Labels[labelNamespace] != "stagely" {
			continue
		}
		out = append(out, contract.FakeMachine{
			ID: strconv.FormatInt(s.ID, 10), Size: s.ServerType, Region: s.Location,
			Image: s.Image, UserData: s.UserData,
		})
	}
	return out
}

// SeedForeign adds a server with no labels and one of another namespace.
func (c contractCloud) SeedForeign() {
	for i, labels := range []map[string]string{nil, {labelNamespace: "other", labelKey: "env20-1", labelEnvironment: "20"}} {
		c.AddServer(hetznerfake.Server{Name: fmt.Sprintf("someone-else-%d", i), Labels: labels})
	}
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
		f := hetznerfake.New(t)
		return contract.Harness{
			Cloud: contractCloud{f},
			New: func(t *testing.T, good bool) provisioner.Provider {
				token := f.Token()
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
	f := hetznerfake.New(t)
	p := newProvider(t, f, f.Token())
	m, err := p.Create(t.Context(), spec(5, 2))
	if err != nil {
		t.Fatal(err)
	}
	id, _ := strconv.ParseInt(m.ID, 10, 64)
	server, ok := f.Server(id)
	if !ok {
		t.Fatalf("the fake holds no server %d", id)
	}
	labels := server.Labels
	want := map[string]string{"stagely": "stagely", "stagely-environment": "5", "stagely-key": "env5-2", "repo": "octo_app", "pr": "12"}
	for k, v := range want {
		if labels[k] != v {
			t.Errorf("label %s = %q, want %q (all: %v)", k, labels[k], v, labels)
		}
	}
	if len(server.Firewalls) == 0 {
		t.Fatal("server created without a firewall")
	}
	fw, ok := f.Firewall(server.Firewalls[0])
	if !ok {
		t.Fatalf("server created with firewall %d, which does not exist", server.Firewalls[0])
	}
	if fw.Name != "stagely-no-inbound" || len(fw.Rules) != 0 {
		t.Errorf("firewall %s has rules %+v; want none (no inbound, all outbound)", fw.Name, fw.Rules)
	}

	// A second machine reuses the firewall rather than making another.
	if _, err := p.Create(t.Context(), spec(6, 1)); err != nil {
		t.Fatal(err)
	}
	if n := count(f, "POST /firewalls"); n != 1 {
		t.Errorf("%d firewalls created, want 1", n)
	}
}

func TestFirewallWithAnInboundRuleIsRefused(t *testing.T) {
	f := hetznerfake.New(t)
	port := "22"
	f.AddFirewall(hetznerfake.Firewall{Name: "stagely-no-inbound", Rules: []schema.FirewallRule{
		{Direction: "in", Protocol: "tcp", Port: &port, SourceIPs: []string{"0.0.0.0/0"}},
	}})
	_, err := newProvider(t, f, f.Token()).Create(t.Context(), spec(5, 1))
	if err == nil || !strings.Contains(err.Error(), "inbound rule (tcp port 22)") {
		t.Fatalf("err = %v, want a refusal naming the inbound rule", err)
	}
	if len(f.Servers()) != 0 {
		t.Error("a server was created behind an open firewall")
	}
}

func TestCreateAfterANameClashReturnsTheExistingServer(t *testing.T) {
	// Another worker's create lands between this one's look-up and its
	// create: the name clash leads back to the same server.
	f := hetznerfake.New(t)
	p := newProvider(t, f, f.Token())
	first, err := p.Create(t.Context(), spec(5, 1))
	if err != nil {
		t.Fatal(err)
	}
	id, _ := strconv.ParseInt(first.ID, 10, 64)
	server, ok := f.Server(id)
	if !ok {
		t.Fatalf("the fake holds no server %d", id)
	}
	// Hidden from the key look-up.
	if err := f.SetLabels(id, map[string]string{"stagely": "stagely"}); err != nil {
		t.Fatal(err)
	}
	_, err = p.Create(t.Context(), spec(5, 1))
	if err == nil {
		t.Fatal("a second server with the same name was accepted")
	}
	if err := f.SetLabels(id, server.Labels); err != nil {
		t.Fatal(err)
	}
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
	f := hetznerfake.New(t)
	s := spec(5, 1)
	s.UserData = strings.Repeat("#", 33<<10)
	_, err := newProvider(t, f, f.Token()).Create(t.Context(), s)
	if !errors.Is(err, provisioner.ErrInvalidSpec) {
		t.Fatalf("err = %v", err)
	}
	if n := count(f, "POST /servers"); n != 0 {
		t.Errorf("%d creates sent", n)
	}
}

func TestRateLimitIsRetriedAsOftenAsConfigured(t *testing.T) {
	f := hetznerfake.New(t)
	f.Fail(contract.RateLimit, 1000)
	_, err := newProvider(t, f, f.Token()).List(t.Context())
	if !errors.Is(err, provisioner.ErrRateLimited) {
		t.Fatalf("err = %v", err)
	}
	if n := count(f, "GET /servers"); n != fastRetry.Attempts {
		t.Errorf("%d tries, want %d", n, fastRetry.Attempts)
	}
}

// A passing failure on Hetzner's side (its docs list these codes for a
// service briefly unavailable, an answer not given in time, maintenance)
// is one the reconciler tries again, with a hint, not a failed deploy.
func TestAnOutageOnHetznersSideIsRetryable(t *testing.T) {
	for _, code := range []string{"unavailable", "service_error", "timeout", "maintenance"} {
		t.Run(code, func(t *testing.T) {
			f := hetznerfake.New(t)
			f.SetBoot(0)
			u, err := url.Parse(f.URL())
			if err != nil {
				t.Fatal(err)
			}
			rp := httputil.NewSingleHostReverseProxy(u)
			front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodPost && r.URL.Path == "/servers" {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusServiceUnavailable)
					fmt.Fprintf(w, `{"error":{"code":%q,"message":"try again","details":null}}`, code)
					return
				}
				rp.ServeHTTP(w, r)
			}))
			defer front.Close()
			p, err := New(Config{Token: f.Token(), Endpoint: front.URL, Retry: fastRetry})
			if err != nil {
				t.Fatal(err)
			}
			_, err = p.Create(t.Context(), provisioner.Spec{EnvironmentID: 3, Key: "env3-1", UserData: "#cloud-config\n"})
			if err == nil || !provisioner.Retryable(err) || provisioner.Hint(err) == "" {
				t.Errorf("Create = %v; retryable %v, hint %q; want a retryable error with a hint", err, provisioner.Retryable(err), provisioner.Hint(err))
			}
		})
	}
}
