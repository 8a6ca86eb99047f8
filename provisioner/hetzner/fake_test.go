package hetzner

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"

	"github.com/stagely-dev/stagely/provisioner/internal/contract"
)

// fakeCloud is the part of the Hetzner Cloud API Stagely uses, on
// loopback. It is strict: a request with an unknown path, query parameter
// or body field, or without the bearer token, fails the test, because the
// real API would refuse it or, worse, ignore what was meant.
type fakeCloud struct {
	t     *testing.T
	srv   *httptest.Server
	token string

	mu         sync.Mutex
	nextID     int64
	servers    map[int64]*fakeServer
	firewalls  map[int64]*schema.Firewall
	boot       int // state reads before a new server runs; <0 never
	failures   map[contract.Failure]int
	requests   []string // "METHOD path" of every request
	violations []string
}

type fakeServer struct {
	s        schema.Server
	userData string
	reads    int
	deleted  bool
}

var (
	hostname   = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	labelValue = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$`)
)

func newFakeCloud(t *testing.T) *fakeCloud {
	f := &fakeCloud{
		t:         t,
		token:     strings.Repeat("t", 64),
		nextID:    1000,
		servers:   map[int64]*fakeServer{},
		firewalls: map[int64]*schema.Firewall{},
		failures:  map[contract.Failure]int{},
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		f.srv.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, v := range f.violations {
			t.Errorf("fake hetzner: %s", v)
		}
	})
	return f
}

func (f *fakeCloud) violate(w http.ResponseWriter, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	f.violations = append(f.violations, msg)
	writeError(w, http.StatusBadRequest, "invalid_input", msg)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]any{"code": code, "message": msg, "details": nil}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (f *fakeCloud) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)

	auth := r.Header.Get("Authorization")
	if !strings.HasPrefix(auth, "Bearer ") {
		f.violate(w, "%s %s without a bearer token", r.Method, r.URL.Path)
		return
	}
	if auth != "Bearer "+f.token {
		writeError(w, http.StatusUnauthorized, "unauthorized", "unable to authenticate")
		return
	}
	if f.take(contract.RateLimit) {
		writeError(w, http.StatusTooManyRequests, "rate_limit_exceeded", "limit of 3600 requests per hour reached")
		return
	}

	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case r.Method == "GET" && r.URL.Path == "/servers":
		f.listServers(w, r)
	case r.Method == "POST" && r.URL.Path == "/servers":
		f.createServer(w, r)
	case len(parts) == 2 && parts[0] == "servers" && (r.Method == "GET" || r.Method == "DELETE"):
		f.server(w, r, parts[1])
	case r.Method == "GET" && r.URL.Path == "/firewalls":
		f.listFirewalls(w, r)
	case r.Method == "POST" && r.URL.Path == "/firewalls":
		f.createFirewall(w, r)
	default:
		f.violate(w, "unexpected request %s %s", r.Method, r.URL)
	}
}

// take consumes one injected failure of kind k, if any is left.
func (f *fakeCloud) take(k contract.Failure) bool {
	if f.failures[k] > 0 {
		f.failures[k]--
		return true
	}
	return false
}

// query checks that q holds only the allowed parameters.
func (f *fakeCloud) query(w http.ResponseWriter, r *http.Request, allowed ...string) (url.Values, bool) {
	q := r.URL.Query()
	for k := range q {
		if !slices.Contains(allowed, k) {
			f.violate(w, "%s %s: unknown query parameter %q", r.Method, r.URL.Path, k)
			return nil, false
		}
	}
	return q, true
}

// decode reads a JSON body strictly into v.
func (f *fakeCloud) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		f.violate(w, "%s %s: Content-Type %q", r.Method, r.URL.Path, ct)
		return false
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		f.violate(w, "%s %s: body: %v", r.Method, r.URL.Path, err)
		return false
	}
	return true
}

// matches reports whether labels satisfy a selector of k=v terms, the only
// form Stagely sends.
func (f *fakeCloud) matches(w http.ResponseWriter, selector string, labels map[string]string) (bool, bool) {
	if selector == "" {
		return true, true
	}
	for term := range strings.SplitSeq(selector, ",") {
		k, v, ok := strings.Cut(term, "=")
		if !ok || strings.ContainsAny(k, "!<>() ") {
			f.violate(w, "label selector term %q is not k=v", term)
			return false, false
		}
		if labels[k] != v {
			return false, true
		}
	}
	return true, true
}

// page cuts items to the requested page and says where the others are.
func page[T any](items []T, q url.Values) ([]T, schema.MetaPagination) {
	n, _ := strconv.Atoi(q.Get("page"))
	per, _ := strconv.Atoi(q.Get("per_page"))
	n, per = max(n, 1), max(min(per, 50), 1)
	if q.Get("per_page") == "" {
		per = 25
	}
	last := max((len(items)+per-1)/per, 1)
	p := schema.MetaPagination{Page: n, PerPage: per, LastPage: last, TotalEntries: len(items)}
	if n < last {
		p.NextPage = n + 1
	}
	if n > 1 {
		p.PreviousPage = n - 1
	}
	lo := min((n-1)*per, len(items))
	return items[lo:min(lo+per, len(items))], p
}

func (f *fakeCloud) listServers(w http.ResponseWriter, r *http.Request) {
	q, ok := f.query(w, r, "label_selector", "page", "per_page", "name", "status", "sort")
	if !ok {
		return
	}
	var out []schema.Server
	for _, id := range sortedKeys(f.servers) {
		s := f.servers[id]
		match, ok := f.matches(w, q.Get("label_selector"), s.s.Labels)
		if !ok {
			return
		}
		if !s.deleted && match && (q.Get("name") == "" || q.Get("name") == s.s.Name) {
			out = append(out, s.s)
		}
	}
	items, p := page(out, q)
	writeJSON(w, http.StatusOK, map[string]any{"servers": nonNil(items), "meta": map[string]any{"pagination": p}})
}

// serverCreate is the request body the API documents for POST /servers.
type serverCreate struct {
	Name             string            `json:"name"`
	ServerType       json.RawMessage   `json:"server_type"`
	Image            json.RawMessage   `json:"image"`
	Location         string            `json:"location"`
	Datacenter       string            `json:"datacenter"`
	UserData         string            `json:"user_data"`
	StartAfterCreate *bool             `json:"start_after_create"`
	Labels           map[string]string `json:"labels"`
	SSHKeys          []json.RawMessage `json:"ssh_keys"`
	Volumes          []int64           `json:"volumes"`
	Networks         []int64           `json:"networks"`
	Automount        *bool             `json:"automount"`
	PlacementGroup   int64             `json:"placement_group"`
	PublicNet        *struct {
		EnableIPv4 bool  `json:"enable_ipv4"`
		EnableIPv6 bool  `json:"enable_ipv6"`
		IPv4       int64 `json:"ipv4"`
		IPv6       int64 `json:"ipv6"`
	} `json:"public_net"`
	Firewalls []struct {
		Firewall int64 `json:"firewall"`
	} `json:"firewalls"`
}

var (
	serverTypes = []string{"cx22", "cx32", "cpx21", "cax11"}
	images      = []string{"ubuntu-24.04", "ubuntu-22.04", "debian-12"}
	locations   = []string{"fsn1", "nbg1", "hel1", "ash"}
)

func (f *fakeCloud) createServer(w http.ResponseWriter, r *http.Request) {
	if _, ok := f.query(w, r); !ok {
		return
	}
	var req serverCreate
	if !f.decode(w, r, &req) {
		return
	}
	var serverType, image string
	if json.Unmarshal(req.ServerType, &serverType) != nil || json.Unmarshal(req.Image, &image) != nil {
		f.violate(w, "server_type %s and image %s should be names", req.ServerType, req.Image)
		return
	}
	switch {
	case !hostname.MatchString(req.Name):
		writeError(w, http.StatusBadRequest, "invalid_input", "invalid input in field 'name'")
		return
	case len(req.UserData) > 32<<10:
		writeError(w, http.StatusBadRequest, "invalid_input", "invalid input in field 'user_data'")
		return
	case len(req.Firewalls) == 0:
		f.violate(w, "server %s created without a firewall", req.Name)
		return
	}
	for k, v := range req.Labels {
		if !labelValue.MatchString(k) || !labelValue.MatchString(v) || k == "" {
			writeError(w, http.StatusBadRequest, "invalid_input", fmt.Sprintf("invalid input in field 'labels': %q=%q", k, v))
			return
		}
	}
	for _, fw := range req.Firewalls {
		if f.firewalls[fw.Firewall] == nil {
			writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("firewall with ID %d not found", fw.Firewall))
			return
		}
	}
	if req.Datacenter != "" || len(req.SSHKeys) > 0 || req.PublicNet != nil {
		f.violate(w, "server %s: Stagely sets no datacenter, SSH keys or public_net", req.Name)
		return
	}
	if !slices.Contains(serverTypes, serverType) || !slices.Contains(images, image) || !slices.Contains(locations, req.Location) || f.take(contract.Invalid) {
		writeError(w, http.StatusBadRequest, "invalid_input", fmt.Sprintf("invalid input in fields 'server_type', 'image' or 'location': %s %s %s", serverType, image, req.Location))
		return
	}
	if f.take(contract.Quota) {
		writeError(w, http.StatusForbidden, "resource_limit_exceeded", "server limit exceeded")
		return
	}
	if f.take(contract.Capacity) {
		writeError(w, http.StatusPreconditionFailed, "resource_unavailable", fmt.Sprintf("server type %s is unavailable in %s", serverType, req.Location))
		return
	}
	for _, s := range f.servers {
		if s.s.Name == req.Name && !s.deleted {
			writeError(w, http.StatusConflict, "uniqueness_error", "server name is already used")
			return
		}
	}
	f.nextID++
	s := &fakeServer{userData: req.UserData, s: schema.Server{
		ID:         f.nextID,
		Name:       req.Name,
		Status:     "initializing",
		Created:    time.Now().UTC().Truncate(time.Second),
		ServerType: schema.ServerType{Name: serverType},
		Datacenter: schema.Datacenter{Name: req.Location + "-dc14", Location: schema.Location{Name: req.Location}},
		Image:      &schema.Image{Name: &image},
		Labels:     req.Labels,
	}}
	for _, fw := range req.Firewalls {
		s.s.PublicNet.Firewalls = append(s.s.PublicNet.Firewalls, schema.ServerFirewall{ID: fw.Firewall, Status: "applied"})
	}
	f.servers[s.s.ID] = s
	writeJSON(w, http.StatusCreated, map[string]any{
		"server":        s.s,
		"action":        action("create_server", s.s.ID),
		"next_actions":  []any{action("start_server", s.s.ID)},
		"root_password": nil,
	})
}

func action(command string, server int64) schema.Action {
	return schema.Action{ID: server*10 + 1, Command: command, Status: "running", Started: time.Now().UTC(),
		Resources: []schema.ActionResourceReference{{ID: server, Type: "server"}}}
}

func (f *fakeCloud) server(w http.ResponseWriter, r *http.Request, idText string) {
	if _, ok := f.query(w, r); !ok {
		return
	}
	id, err := strconv.ParseInt(idText, 10, 64)
	s := f.servers[id]
	if err != nil || s == nil || s.deleted {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("server with ID %q not found", idText))
		return
	}
	if r.Method == "DELETE" {
		s.deleted = true
		writeJSON(w, http.StatusOK, map[string]any{"action": action("delete_server", id)})
		return
	}
	s.reads++
	if f.boot >= 0 && s.reads > f.boot {
		s.s.Status = "running"
	}
	writeJSON(w, http.StatusOK, map[string]any{"server": s.s})
}

func (f *fakeCloud) listFirewalls(w http.ResponseWriter, r *http.Request) {
	q, ok := f.query(w, r, "name", "label_selector", "page", "per_page", "sort")
	if !ok {
		return
	}
	var out []schema.Firewall
	for _, id := range sortedKeys(f.firewalls) {
		if fw := f.firewalls[id]; q.Get("name") == "" || q.Get("name") == fw.Name {
			out = append(out, *fw)
		}
	}
	items, p := page(out, q)
	writeJSON(w, http.StatusOK, map[string]any{"firewalls": nonNil(items), "meta": map[string]any{"pagination": p}})
}

type firewallCreate struct {
	Name    string                       `json:"name"`
	Labels  map[string]string            `json:"labels"`
	Rules   []schema.FirewallRuleRequest `json:"rules"`
	ApplyTo []schema.FirewallResource    `json:"apply_to"`
}

func (f *fakeCloud) createFirewall(w http.ResponseWriter, r *http.Request) {
	var req firewallCreate
	if !f.decode(w, r, &req) {
		return
	}
	for _, fw := range f.firewalls {
		if fw.Name == req.Name {
			writeError(w, http.StatusConflict, "uniqueness_error", "firewall name is already used")
			return
		}
	}
	f.nextID++
	fw := &schema.Firewall{ID: f.nextID, Name: req.Name, Labels: req.Labels, Created: time.Now().UTC(), Rules: []schema.FirewallRule{}, AppliedTo: []schema.FirewallResource{}}
	for _, rule := range req.Rules {
		fw.Rules = append(fw.Rules, schema.FirewallRule{Direction: rule.Direction, SourceIPs: rule.SourceIPs, DestinationIPs: rule.DestinationIPs, Protocol: rule.Protocol, Port: rule.Port})
	}
	f.firewalls[fw.ID] = fw
	writeJSON(w, http.StatusCreated, map[string]any{"firewall": fw, "actions": []any{}})
}

func sortedKeys[V any](m map[int64]V) []int64 {
	keys := make([]int64, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// The contract.Cloud side.

func (f *fakeCloud) Live() []contract.FakeMachine {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []contract.FakeMachine
	for _, id := range sortedKeys(f.servers) {
		s := f.servers[id]
		if s.deleted || s.s.Labels[labelNamespace] != "stagely" {
			continue
		}
		out = append(out, contract.FakeMachine{
			ID: strconv.FormatInt(id, 10), Size: s.s.ServerType.Name, Region: s.s.Datacenter.Location.Name,
			Image: *s.s.Image.Name, UserData: s.userData,
		})
	}
	return out
}

func (f *fakeCloud) SetBoot(reads int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.boot = reads
}

func (f *fakeCloud) Fail(k contract.Failure, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures[k] = n
}

func (f *fakeCloud) SeedForeign() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, labels := range []map[string]string{nil, {labelNamespace: "other", labelKey: "env20-1", labelEnvironment: "20"}} {
		f.nextID++
		f.servers[f.nextID] = &fakeServer{s: schema.Server{ID: f.nextID, Name: fmt.Sprintf("someone-else-%d", i), Status: "running", Labels: labels}}
	}
}

// firewall returns the firewall a server was created with.
func (f *fakeCloud) firewallOf(id int64) *schema.Firewall {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.servers[id]
	if s == nil || len(s.s.PublicNet.Firewalls) == 0 {
		return nil
	}
	return f.firewalls[s.s.PublicNet.Firewalls[0].ID]
}

func (f *fakeCloud) labels(id int64) map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.servers[id].s.Labels
}

func (f *fakeCloud) count(request string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.requests {
		if r == request {
			n++
		}
	}
	return n
}
