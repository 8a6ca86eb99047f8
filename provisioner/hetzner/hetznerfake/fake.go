// Package hetznerfake is a test double of the Hetzner Cloud API for
// Stagely's tests: the provisioner/hetzner tests run the provider against
// it, and end-to-end tests point the Stagely server (through hcloud-go) at
// it and boot each server it creates by running the server's user data.
//
// It serves the part of the API Stagely uses, on loopback, and it is
// strict: a request with an unknown path, query parameter or body field,
// or without the bearer token, fails the test, because the real API would
// refuse it or, worse, ignore what was meant.
package hetznerfake

import (
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stagely-dev/stagely/provisioner/internal/contract"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"
)

// Cloud is one fake Hetzner Cloud project. Its methods are safe for
// concurrent use.
type Cloud struct {
	srv   *httptest.Server
	token string
	// hooks counts hook calls not yet returned, so the test does not end
	// (and a hook does not report into a finished test) while one runs.
	hooks sync.WaitGroup

	mu         sync.Mutex
	nextID     int64
	servers    map[int64]*server
	firewalls  map[int64]*schema.Firewall
	boot       int // state reads before a new server runs; <0 never
	failures   map[contract.Failure]int
	requests   []string // "METHOD path" of every request
	violations []string
	onBoot     func(Server)
	onDelete   func(Server)
}

type server struct {
	s        schema.Server
	userData string
	reads    int
	deleted  bool
	// hooked is closed when the last hook queued for this server has
	// returned; the next one waits for it, so a server's hooks run in the
	// order of its life.
	hooked chan struct{}
}

// Server is a server as the fake holds it.
type Server struct {
	ID   int64
	Name string
	// Status is "initializing" until the server boots, then "running";
	// a deleted server's last Status is "deleting".
	Status                      string
	ServerType, Location, Image string
	Labels                      map[string]string
	// UserData is the cloud-init user data the server was created with,
	// as the server would read it.
	UserData string
	// Firewalls are the IDs of the firewalls applied to the server.
	Firewalls []int64
	Created   time.Time
}

// Firewall is a firewall as the fake holds it.
type Firewall struct {
	ID     int64
	Name   string
	Labels map[string]string
	Rules  []schema.FirewallRule
}

// New starts a fake on loopback. It stops when tb's test ends, after the
// hooks it called have returned, and then fails the test once for every
// request the real API would have refused for its form, or Stagely must
// never send.
func New(tb testing.TB) *Cloud {
	c := &Cloud{
		// Hetzner's API tokens are 64 characters.
		token:     strings.Repeat("t", 64),
		nextID:    1000,
		servers:   map[int64]*server{},
		firewalls: map[int64]*schema.Firewall{},
		failures:  map[contract.Failure]int{},
	}
	c.srv = httptest.NewServer(http.HandlerFunc(c.serve))
	tb.Cleanup(func() {
		c.srv.Close() // waits for requests in flight, so no hook is queued after it
		c.hooks.Wait()
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, v := range c.violations {
			tb.Errorf("fake hetzner: %s", v)
		}
	})
	return c
}

// URL is the API's base URL, for hcloud.WithEndpoint or Stagely's
// Hetzner endpoint setting.
func (c *Cloud) URL() string { return c.srv.URL }

// Token is the only API token the fake accepts; any other bearer token is
// answered 401 unauthorized.
func (c *Cloud) Token() string { return c.token }

// OnBoot sets hook to be called with each server created through the API
// when it starts running (see SetBoot), once per server. A nil hook calls
// nothing.
//
// Hooks run on their own goroutine, outside the fake's lock, so they may
// call the fake, its API included, and a slow hook holds up no answer.
// One server's hooks run one after another, in order: its OnDelete hook
// waits until its OnBoot hook has returned. So OnBoot should start what it
// boots (exec.Cmd.Start) and return rather than wait for it, and OnDelete
// can stop it. The test ends only after every hook has returned. Hooks
// must not call tb.FailNow (t.Fatal); report with tb.Errorf.
func (c *Cloud) OnBoot(hook func(Server)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onBoot = hook
}

// OnDelete sets hook to be called with each server deleted through the
// API, after the server's OnBoot hook (if any) has returned. A nil hook
// calls nothing. Hooks run as OnBoot describes.
func (c *Cloud) OnDelete(hook func(Server)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onDelete = hook
}

// hook queues a call of fn with s as it is now. c.mu must be held.
func (c *Cloud) hook(s *server, fn func(Server)) {
	if fn == nil {
		return
	}
	prev, done, v := s.hooked, make(chan struct{}), s.view()
	s.hooked = done
	c.hooks.Add(1)
	go func() {
		defer c.hooks.Done()
		defer close(done)
		if prev != nil {
			<-prev
		}
		fn(v)
	}()
}

// SetBoot sets how many state reads (GET /servers/{id}) a new server
// answers "initializing" before it runs; a negative number means it never
// runs. The default, 0, runs it at its first read.
func (c *Cloud) SetBoot(reads int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.boot = reads
}

// Fail makes the next n requests that f applies to fail, answered the way
// Hetzner answers them: contract.RateLimit with 429 rate_limit_exceeded
// (any request); for server creates, contract.Quota with 403
// resource_limit_exceeded, contract.Capacity with 412
// resource_unavailable, contract.Invalid with 400 invalid_input.
func (c *Cloud) Fail(f contract.Failure, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failures[f] = n
}

// take consumes one injected failure of kind f, if any is left. c.mu must
// be held.
func (c *Cloud) take(f contract.Failure) bool {
	if c.failures[f] > 0 {
		c.failures[f]--
		return true
	}
	return false
}

// Servers returns the servers that exist and are not deleted, by ID.
func (c *Cloud) Servers() []Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Server
	for _, id := range sortedKeys(c.servers) {
		if s := c.servers[id]; !s.deleted {
			out = append(out, s.view())
		}
	}
	return out
}

// Server returns the server with the ID, unless there is none or it was
// deleted.
func (c *Cloud) Server(id int64) (Server, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.servers[id]
	if s == nil || s.deleted {
		return Server{}, false
	}
	return s.view(), true
}

// AddServer adds a server as if someone made it outside the API under
// test, such as another tool's or another Stagely's server, and returns
// it with its ID. Its Status defaults to "running". No hook is called for
// it.
func (c *Cloud) AddServer(s Server) Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextID++
	fs := &server{userData: s.UserData, s: schema.Server{
		ID:         c.nextID,
		Name:       s.Name,
		Status:     s.Status,
		Created:    s.Created,
		ServerType: schema.ServerType{Name: s.ServerType},
		Datacenter: schema.Datacenter{Location: schema.Location{Name: s.Location}},
		Labels:     maps.Clone(s.Labels),
	}}
	if fs.s.Status == "" {
		fs.s.Status = "running"
	}
	if fs.s.Created.IsZero() {
		fs.s.Created = time.Now().UTC().Truncate(time.Second)
	}
	if s.Image != "" {
		fs.s.Image = &schema.Image{Name: &s.Image}
	}
	for _, fw := range s.Firewalls {
		fs.s.PublicNet.Firewalls = append(fs.s.PublicNet.Firewalls, schema.ServerFirewall{ID: fw, Status: "applied"})
	}
	c.servers[fs.s.ID] = fs
	return fs.view()
}

// SetLabels replaces the labels of a server, as someone editing them in
// Hetzner's console would.
func (c *Cloud) SetLabels(id int64, labels map[string]string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.servers[id]
	if s == nil || s.deleted {
		return fmt.Errorf("hetznerfake: set labels of server %d: no such server", id)
	}
	s.s.Labels = maps.Clone(labels)
	return nil
}

// Firewalls returns the firewalls, by ID.
func (c *Cloud) Firewalls() []Firewall {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Firewall
	for _, id := range sortedKeys(c.firewalls) {
		out = append(out, firewallView(c.firewalls[id]))
	}
	return out
}

// Firewall returns the firewall with the ID, if there is one.
func (c *Cloud) Firewall(id int64) (Firewall, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fw := c.firewalls[id]
	if fw == nil {
		return Firewall{}, false
	}
	return firewallView(fw), true
}

// AddFirewall adds a firewall as if someone made it outside the API under
// test, such as one given an inbound rule by hand, and returns it with its
// ID.
func (c *Cloud) AddFirewall(fw Firewall) Firewall {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextID++
	f := &schema.Firewall{
		ID:        c.nextID,
		Name:      fw.Name,
		Labels:    maps.Clone(fw.Labels),
		Created:   time.Now().UTC(),
		Rules:     append([]schema.FirewallRule{}, fw.Rules...),
		AppliedTo: []schema.FirewallResource{},
	}
	c.firewalls[f.ID] = f
	return firewallView(f)
}

// Requests returns "METHOD path" of every request the fake has had, in
// order, such as "POST /servers".
func (c *Cloud) Requests() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.requests)
}

// view copies s so that callers share no memory with the fake.
func (s *server) view() Server {
	v := Server{
		ID:         s.s.ID,
		Name:       s.s.Name,
		Status:     s.s.Status,
		ServerType: s.s.ServerType.Name,
		Location:   s.s.Datacenter.Location.Name,
		Labels:     maps.Clone(s.s.Labels),
		UserData:   s.userData,
		Created:    s.s.Created,
	}
	if s.s.Image != nil && s.s.Image.Name != nil {
		v.Image = *s.s.Image.Name
	}
	for _, fw := range s.s.PublicNet.Firewalls {
		v.Firewalls = append(v.Firewalls, fw.ID)
	}
	return v
}

func firewallView(fw *schema.Firewall) Firewall {
	return Firewall{ID: fw.ID, Name: fw.Name, Labels: maps.Clone(fw.Labels), Rules: slices.Clone(fw.Rules)}
}

func sortedKeys[V any](m map[int64]V) []int64 {
	return slices.Sorted(maps.Keys(m))
}
