package digitalocean

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

	"github.com/digitalocean/godo"

	"github.com/stagely-dev/stagely/provisioner/internal/contract"
)

// fakeCloud is the part of DigitalOcean's API v2 Stagely uses, on
// loopback. It is strict: a request with an unknown path, query parameter
// or body field, without the bearer token, or carrying an inbound firewall
// rule fails the test.
type fakeCloud struct {
	t     *testing.T
	srv   *httptest.Server
	token string

	mu        sync.Mutex
	nextID    int
	droplets  map[int]*fakeDroplet
	firewalls []*godo.Firewall
	// tags are the account's tags. A droplet create makes the tags it
	// names; a firewall create refuses a tag that does not exist yet.
	tags       map[string]bool
	boot       int
	failures   map[contract.Failure]int
	requests   []string
	createBody []map[string]any // every droplet create body, as sent
	violations []string
	// dropAfterCreate makes the next droplet create succeed but answer
	// 503, as when a load balancer loses the answer.
	dropAfterCreate int
}

type fakeDroplet struct {
	d        godo.Droplet
	userData string
	reads    int
	deleted  bool
}

var (
	tagName  = regexp.MustCompile(`^[A-Za-z0-9_:-]{1,255}$`)
	hostname = regexp.MustCompile(`^[A-Za-z0-9.-]{1,253}$`)
)

func newFakeCloud(t *testing.T) *fakeCloud {
	f := &fakeCloud{t: t, token: "dop_v1_" + strings.Repeat("a", 64), nextID: 5000, droplets: map[int]*fakeDroplet{}, tags: map[string]bool{}, failures: map[contract.Failure]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		f.srv.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, v := range f.violations {
			t.Errorf("fake digitalocean: %s", v)
		}
	})
	return f
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Ratelimit-Limit", "5000")
	w.Header().Set("Ratelimit-Remaining", "4999")
	w.Header().Set("Ratelimit-Reset", strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10))
	w.WriteHeader(status)
	if v != nil {
		json.NewEncoder(w).Encode(v)
	}
}

func writeError(w http.ResponseWriter, status int, id, msg string) {
	writeJSON(w, status, map[string]string{"id": id, "message": msg, "request_id": "req-" + strconv.Itoa(status)})
}

func (f *fakeCloud) violate(w http.ResponseWriter, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	f.violations = append(f.violations, msg)
	writeError(w, http.StatusBadRequest, "bad_request", msg)
}

func (f *fakeCloud) take(k contract.Failure) bool {
	if f.failures[k] > 0 {
		f.failures[k]--
		return true
	}
	return false
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
		writeError(w, http.StatusUnauthorized, "Unauthorized", "Unable to authenticate you")
		return
	}
	if f.take(contract.RateLimit) {
		writeError(w, http.StatusTooManyRequests, "too_many_requests", "API Rate limit exceeded.")
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/v2/")
	if !ok {
		f.violate(w, "path %s is not under /v2/", r.URL.Path)
		return
	}
	parts := strings.Split(rest, "/")
	switch {
	case r.Method == "GET" && rest == "droplets":
		f.listDroplets(w, r)
	case r.Method == "POST" && rest == "droplets":
		f.createDroplet(w, r)
	case len(parts) == 2 && parts[0] == "droplets" && (r.Method == "GET" || r.Method == "DELETE"):
		f.droplet(w, r, parts[1])
	case r.Method == "GET" && rest == "firewalls":
		f.listFirewalls(w, r)
	case r.Method == "POST" && rest == "firewalls":
		f.createFirewall(w, r)
	case r.Method == "POST" && rest == "tags":
		f.createTag(w, r)
	case len(parts) == 2 && parts[0] == "tags" && r.Method == "GET":
		f.tag(w, r, parts[1])
	default:
		f.violate(w, "unexpected request %s %s", r.Method, r.URL)
	}
}

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

// paginate cuts items to the page asked for and links the next one the
// way DigitalOcean does.
func paginate[T any](r *http.Request, items []T) ([]T, *godo.Links, *godo.Meta) {
	q := r.URL.Query()
	page, _ := strconv.Atoi(q.Get("page"))
	per, _ := strconv.Atoi(q.Get("per_page"))
	page, per = max(page, 1), max(min(per, 200), 1)
	if q.Get("per_page") == "" {
		per = 20
	}
	lo := min((page-1)*per, len(items))
	hi := min(lo+per, len(items))
	links := &godo.Links{}
	link := func(n int) string {
		u := *r.URL
		q := u.Query()
		q.Set("page", strconv.Itoa(n))
		u.RawQuery = q.Encode()
		return "http://" + r.Host + u.String()
	}
	if hi < len(items) || page > 1 {
		links.Pages = &godo.Pages{}
		if hi < len(items) {
			links.Pages.Next = link(page + 1)
		}
		if page > 1 {
			links.Pages.Prev = link(page - 1)
		}
	}
	return items[lo:hi], links, &godo.Meta{Total: len(items)}
}

func (f *fakeCloud) listDroplets(w http.ResponseWriter, r *http.Request) {
	q, ok := f.query(w, r, "tag_name", "page", "per_page")
	if !ok {
		return
	}
	var out []godo.Droplet
	for _, id := range sortedKeys(f.droplets) {
		d := f.droplets[id]
		if !d.deleted && (q.Get("tag_name") == "" || slices.Contains(d.d.Tags, q.Get("tag_name"))) {
			out = append(out, d.d)
		}
	}
	items, links, meta := paginate(r, out)
	if items == nil {
		items = []godo.Droplet{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"droplets": items, "links": links, "meta": meta})
}

// dropletCreate is the request body the API documents for POST
// /v2/droplets (one droplet).
type dropletCreate struct {
	Name              string            `json:"name"`
	Region            string            `json:"region"`
	Size              string            `json:"size"`
	Image             json.RawMessage   `json:"image"`
	SSHKeys           []json.RawMessage `json:"ssh_keys"`
	Backups           bool              `json:"backups"`
	BackupPolicy      json.RawMessage   `json:"backup_policy"`
	IPv6              bool              `json:"ipv6"`
	Monitoring        bool              `json:"monitoring"`
	Tags              []string          `json:"tags"`
	UserData          string            `json:"user_data"`
	PrivateNetworking bool              `json:"private_networking"`
	Volumes           []string          `json:"volumes"`
	VPCUUID           string            `json:"vpc_uuid"`
	WithDropletAgent  *bool             `json:"with_droplet_agent"`
}

var (
	sizes   = []string{"s-1vcpu-1gb", "s-2vcpu-4gb", "s-4vcpu-8gb"}
	regions = []string{"fra1", "nyc3", "ams3", "sfo3"}
	images  = []string{"ubuntu-24-04-x64", "ubuntu-22-04-x64", "docker-20-04"}
)

func (f *fakeCloud) createDroplet(w http.ResponseWriter, r *http.Request) {
	if _, ok := f.query(w, r); !ok {
		return
	}
	var req dropletCreate
	if !f.decode(w, r, &req) {
		return
	}
	var image string
	if err := json.Unmarshal(req.Image, &image); err != nil {
		f.violate(w, "image %s is not a slug", req.Image)
		return
	}
	switch {
	case !hostname.MatchString(req.Name):
		writeError(w, http.StatusUnprocessableEntity, "unprocessable_entity", "Only valid hostname characters are allowed. (a-z, A-Z, 0-9, . and -)")
		return
	case len(req.UserData) > 64<<10:
		writeError(w, http.StatusUnprocessableEntity, "unprocessable_entity", "user_data is too long")
		return
	case len(req.SSHKeys) > 0 || req.Backups:
		f.violate(w, "droplet %s: Stagely adds no SSH keys and no backups", req.Name)
		return
	}
	for _, tag := range req.Tags {
		if !tagName.MatchString(tag) {
			writeError(w, http.StatusUnprocessableEntity, "unprocessable_entity", fmt.Sprintf("tag %q: only letters, numbers, colons, dashes and underscores are allowed", tag))
			return
		}
	}
	if !slices.Contains(sizes, req.Size) || f.take(contract.Invalid) {
		writeError(w, http.StatusUnprocessableEntity, "unprocessable_entity", "You specified an invalid size for Droplet creation.")
		return
	}
	if !slices.Contains(regions, req.Region) || !slices.Contains(images, image) {
		writeError(w, http.StatusUnprocessableEntity, "unprocessable_entity", "You specified an invalid image or region for Droplet creation.")
		return
	}
	if f.take(contract.Quota) {
		writeError(w, http.StatusUnprocessableEntity, "unprocessable_entity", "creating this/these droplet(s) will exceed your droplet limit")
		return
	}
	if f.take(contract.Capacity) {
		writeError(w, http.StatusUnprocessableEntity, "unprocessable_entity", fmt.Sprintf("Size %s is not available in this region right now.", req.Size))
		return
	}
	var body map[string]any
	raw, _ := json.Marshal(req)
	json.Unmarshal(raw, &body)
	f.createBody = append(f.createBody, body)

	f.nextID++
	d := &fakeDroplet{userData: req.UserData, d: godo.Droplet{
		ID: f.nextID, Name: req.Name, Status: "new", SizeSlug: req.Size,
		Region: &godo.Region{Slug: req.Region}, Image: &godo.Image{Slug: image}, Size: &godo.Size{Slug: req.Size},
		Tags: req.Tags, Created: time.Now().UTC().Format(time.RFC3339), VolumeIDs: []string{},
	}}
	f.droplets[d.d.ID] = d
	for _, tag := range req.Tags {
		f.tags[tag] = true // "Tag names can either be existing or new tags."
	}
	if f.dropAfterCreate > 0 {
		f.dropAfterCreate--
		writeError(w, http.StatusServiceUnavailable, "service_unavailable", "upstream timed out")
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{
		"droplet": d.d,
		"links":   map[string]any{"actions": []any{map[string]any{"id": d.d.ID * 10, "rel": "create", "href": "http://" + r.Host + "/v2/actions/" + strconv.Itoa(d.d.ID*10)}}},
	})
}

func (f *fakeCloud) droplet(w http.ResponseWriter, r *http.Request, idText string) {
	if _, ok := f.query(w, r); !ok {
		return
	}
	id, err := strconv.Atoi(idText)
	d := f.droplets[id]
	if err != nil || d == nil || d.deleted {
		writeError(w, http.StatusNotFound, "not_found", "The resource you were accessing could not be found.")
		return
	}
	if r.Method == "DELETE" {
		d.deleted = true
		writeJSON(w, http.StatusNoContent, nil)
		return
	}
	d.reads++
	if f.boot >= 0 && d.reads > f.boot {
		d.d.Status = "active"
	}
	writeJSON(w, http.StatusOK, map[string]any{"droplet": d.d})
}

func (f *fakeCloud) listFirewalls(w http.ResponseWriter, r *http.Request) {
	if _, ok := f.query(w, r, "page", "per_page"); !ok {
		return
	}
	var out []godo.Firewall
	for _, fw := range f.firewalls {
		out = append(out, *fw)
	}
	items, links, meta := paginate(r, out)
	if items == nil {
		items = []godo.Firewall{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"firewalls": items, "links": links, "meta": meta})
}

type target struct {
	Addresses        []string `json:"addresses"`
	Tags             []string `json:"tags"`
	DropletIDs       []int    `json:"droplet_ids"`
	LoadBalancerUIDs []string `json:"load_balancer_uids"`
	KubernetesIDs    []string `json:"kubernetes_ids"`
}

type firewallCreate struct {
	Name         string `json:"name"`
	InboundRules []struct {
		Protocol string  `json:"protocol"`
		Ports    string  `json:"ports"`
		Sources  *target `json:"sources"`
	} `json:"inbound_rules"`
	OutboundRules []struct {
		Protocol     string  `json:"protocol"`
		Ports        string  `json:"ports"`
		Destinations *target `json:"destinations"`
	} `json:"outbound_rules"`
	DropletIDs []int    `json:"droplet_ids"`
	Tags       []string `json:"tags"`
}

func (f *fakeCloud) createFirewall(w http.ResponseWriter, r *http.Request) {
	var req firewallCreate
	if !f.decode(w, r, &req) {
		return
	}
	if len(req.InboundRules) > 0 {
		f.violate(w, "firewall %s has %d inbound rules; Stagely's must have none", req.Name, len(req.InboundRules))
		return
	}
	if len(req.OutboundRules) == 0 {
		writeError(w, http.StatusUnprocessableEntity, "unprocessable_entity", "must have at least one rule")
		return
	}
	// DigitalOcean's API reference, "Add Tags to a Firewall" (and the
	// firewall's tags in "Create a New Firewall"): "Tag names must exist in
	// order to be referenced in a request." Unlike a droplet create, a
	// firewall create does not make the tags it names.
	for _, tag := range req.Tags {
		if !f.tags[tag] {
			writeError(w, http.StatusUnprocessableEntity, "unprocessable_entity", fmt.Sprintf("tag %q does not exist", tag))
			return
		}
	}
	fw := &godo.Firewall{ID: fmt.Sprintf("fw-%d", len(f.firewalls)+1), Name: req.Name, Status: "waiting", Tags: req.Tags, DropletIDs: req.DropletIDs, Created: time.Now().UTC().Format(time.RFC3339)}
	for _, o := range req.OutboundRules {
		if !slices.Contains([]string{"tcp", "udp", "icmp"}, o.Protocol) || o.Destinations == nil || (o.Protocol != "icmp" && o.Ports == "") {
			writeError(w, http.StatusUnprocessableEntity, "unprocessable_entity", fmt.Sprintf("invalid outbound rule %+v", o))
			return
		}
		fw.OutboundRules = append(fw.OutboundRules, godo.OutboundRule{Protocol: o.Protocol, PortRange: o.Ports, Destinations: &godo.Destinations{Addresses: o.Destinations.Addresses}})
	}
	f.firewalls = append(f.firewalls, fw)
	writeJSON(w, http.StatusAccepted, map[string]any{"firewall": fw})
}

// createTag is POST /v2/tags. Creating a tag that exists answers it again.
func (f *fakeCloud) createTag(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"name"`
	}
	if !f.decode(w, r, &req) {
		return
	}
	if !tagName.MatchString(req.Name) {
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("tag %q: only letters, numbers, colons, dashes and underscores are allowed", req.Name))
		return
	}
	f.tags[req.Name] = true
	writeJSON(w, http.StatusCreated, map[string]any{"tag": godo.Tag{Name: req.Name, Resources: &godo.TaggedResources{}}})
}

// tag is GET /v2/tags/{name}.
func (f *fakeCloud) tag(w http.ResponseWriter, r *http.Request, name string) {
	if _, ok := f.query(w, r); !ok {
		return
	}
	if !f.tags[name] {
		writeError(w, http.StatusNotFound, "not_found", "The resource you were accessing could not be found.")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"tag": godo.Tag{Name: name, Resources: &godo.TaggedResources{}}})
}

func sortedKeys[V any](m map[int]V) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// The contract.Cloud side.

func (f *fakeCloud) Live() []contract.FakeMachine {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []contract.FakeMachine
	for _, id := range sortedKeys(f.droplets) {
		d := f.droplets[id]
		if d.deleted || !slices.Contains(d.d.Tags, "stagely") {
			continue
		}
		out = append(out, contract.FakeMachine{ID: strconv.Itoa(id), Size: d.d.SizeSlug, Region: d.d.Region.Slug, Image: d.d.Image.Slug, UserData: d.userData})
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
	for i, tags := range [][]string{nil, {"other", "other:env:20", "other:key:env20-1"}} {
		f.nextID++
		f.droplets[f.nextID] = &fakeDroplet{d: godo.Droplet{ID: f.nextID, Name: fmt.Sprintf("someone-else-%d", i), Status: "active", Tags: tags,
			Region: &godo.Region{Slug: "fra1"}, Image: &godo.Image{Slug: "ubuntu-24-04-x64"}}}
	}
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
