package hetznerfake

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"

	"github.com/stagely-dev/stagely/provisioner/internal/contract"
)

// The HTTP side: each handler runs with c.mu held.

func (c *Cloud) serve(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.requests = append(c.requests, r.Method+" "+r.URL.Path)

	auth := r.Header.Get("Authorization")
	if !strings.HasPrefix(auth, "Bearer ") {
		c.violate(w, "%s %s without a bearer token", r.Method, r.URL.Path)
		return
	}
	if auth != "Bearer "+c.token {
		writeError(w, http.StatusUnauthorized, "unauthorized", "unable to authenticate")
		return
	}
	if c.take(contract.RateLimit) {
		writeError(w, http.StatusTooManyRequests, "rate_limit_exceeded", "limit of 3600 requests per hour reached")
		return
	}

	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case r.Method == "GET" && r.URL.Path == "/servers":
		c.listServers(w, r)
	case r.Method == "POST" && r.URL.Path == "/servers":
		c.createServer(w, r)
	case len(parts) == 2 && parts[0] == "servers" && (r.Method == "GET" || r.Method == "DELETE"):
		c.server(w, r, parts[1])
	case r.Method == "GET" && r.URL.Path == "/firewalls":
		c.listFirewalls(w, r)
	case r.Method == "POST" && r.URL.Path == "/firewalls":
		c.createFirewall(w, r)
	default:
		c.violate(w, "unexpected request %s %s", r.Method, r.URL)
	}
}

// violate records a request the real API would refuse for its form, or
// Stagely must never send, and refuses it.
func (c *Cloud) violate(w http.ResponseWriter, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	c.violations = append(c.violations, msg)
	writeError(w, http.StatusBadRequest, "invalid_input", msg)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]any{"code": code, "message": msg, "details": nil}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	// An error here is the client gone; the client's side reports it.
	_ = json.NewEncoder(w).Encode(v)
}

// query checks that q holds only the allowed parameters.
func (c *Cloud) query(w http.ResponseWriter, r *http.Request, allowed ...string) (url.Values, bool) {
	q := r.URL.Query()
	for k := range q {
		if !slices.Contains(allowed, k) {
			c.violate(w, "%s %s: unknown query parameter %q", r.Method, r.URL.Path, k)
			return nil, false
		}
	}
	return q, true
}

// decode reads a JSON body strictly into v.
func (c *Cloud) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		c.violate(w, "%s %s: Content-Type %q", r.Method, r.URL.Path, ct)
		return false
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		c.violate(w, "%s %s: body: %v", r.Method, r.URL.Path, err)
		return false
	}
	return true
}

// matches reports whether labels satisfy a selector of k=v terms, the only
// form Stagely sends.
func (c *Cloud) matches(w http.ResponseWriter, selector string, labels map[string]string) (match, ok bool) {
	if selector == "" {
		return true, true
	}
	for term := range strings.SplitSeq(selector, ",") {
		k, v, ok := strings.Cut(term, "=")
		if !ok || strings.ContainsAny(k, "!<>() ") {
			c.violate(w, "label selector term %q is not k=v", term)
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

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func (c *Cloud) listServers(w http.ResponseWriter, r *http.Request) {
	q, ok := c.query(w, r, "label_selector", "page", "per_page", "name", "status", "sort")
	if !ok {
		return
	}
	var out []schema.Server
	for _, id := range sortedKeys(c.servers) {
		s := c.servers[id]
		match, ok := c.matches(w, q.Get("label_selector"), s.s.Labels)
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

func (c *Cloud) createServer(w http.ResponseWriter, r *http.Request) {
	if _, ok := c.query(w, r); !ok {
		return
	}
	var req serverCreate
	if !c.decode(w, r, &req) {
		return
	}
	var serverType, image string
	if json.Unmarshal(req.ServerType, &serverType) != nil || json.Unmarshal(req.Image, &image) != nil {
		c.violate(w, "server_type %s and image %s should be names", req.ServerType, req.Image)
		return
	}
	switch {
	case !validHostname(req.Name):
		writeError(w, http.StatusBadRequest, "invalid_input", "invalid input in field 'name'")
		return
	case len(req.UserData) > 32<<10:
		writeError(w, http.StatusBadRequest, "invalid_input", "invalid input in field 'user_data'")
		return
	case len(req.Firewalls) == 0:
		c.violate(w, "server %s created without a firewall", req.Name)
		return
	}
	for k, v := range req.Labels {
		if k == "" || !validLabel(k) || !validLabel(v) {
			writeError(w, http.StatusBadRequest, "invalid_input", fmt.Sprintf("invalid input in field 'labels': %q=%q", k, v))
			return
		}
	}
	for _, fw := range req.Firewalls {
		if c.firewalls[fw.Firewall] == nil {
			writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("firewall with ID %d not found", fw.Firewall))
			return
		}
	}
	if req.Datacenter != "" || len(req.SSHKeys) > 0 || req.PublicNet != nil {
		c.violate(w, "server %s: Stagely sets no datacenter, SSH keys or public_net", req.Name)
		return
	}
	// The part of Hetzner's catalogue Stagely's tests ask for.
	serverTypes := []string{"cx22", "cx32", "cpx21", "cax11"}
	images := []string{"ubuntu-24.04", "ubuntu-22.04", "debian-12"}
	locations := []string{"fsn1", "nbg1", "hel1", "ash"}
	if !slices.Contains(serverTypes, serverType) || !slices.Contains(images, image) || !slices.Contains(locations, req.Location) || c.take(contract.Invalid) {
		writeError(w, http.StatusBadRequest, "invalid_input", fmt.Sprintf("invalid input in fields 'server_type', 'image' or 'location': %s %s %s", serverType, image, req.Location))
		return
	}
	if c.take(contract.Quota) {
		writeError(w, http.StatusForbidden, "resource_limit_exceeded", "server limit exceeded")
		return
	}
	if c.take(contract.Capacity) {
		writeError(w, http.StatusPreconditionFailed, "resource_unavailable", fmt.Sprintf("server type %s is unavailable in %s", serverType, req.Location))
		return
	}
	for _, s := range c.servers {
		if s.s.Name == req.Name && !s.deleted {
			writeError(w, http.StatusConflict, "uniqueness_error", "server name is already used")
			return
		}
	}
	c.nextID++
	s := &server{userData: req.UserData, s: schema.Server{
		ID:         c.nextID,
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
	c.servers[s.s.ID] = s
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

func (c *Cloud) server(w http.ResponseWriter, r *http.Request, idText string) {
	if _, ok := c.query(w, r); !ok {
		return
	}
	id, err := strconv.ParseInt(idText, 10, 64)
	s := c.servers[id]
	if err != nil || s == nil || s.deleted {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("server with ID %q not found", idText))
		return
	}
	if r.Method == "DELETE" {
		s.deleted = true
		s.s.Status = "deleting"
		c.hook(s, c.onDelete)
		writeJSON(w, http.StatusOK, map[string]any{"action": action("delete_server", id)})
		return
	}
	s.reads++
	if s.s.Status == "initializing" && c.boot >= 0 && s.reads > c.boot {
		s.s.Status = "running"
		c.hook(s, c.onBoot)
	}
	writeJSON(w, http.StatusOK, map[string]any{"server": s.s})
}

func (c *Cloud) listFirewalls(w http.ResponseWriter, r *http.Request) {
	q, ok := c.query(w, r, "name", "label_selector", "page", "per_page", "sort")
	if !ok {
		return
	}
	var out []schema.Firewall
	for _, id := range sortedKeys(c.firewalls) {
		if fw := c.firewalls[id]; q.Get("name") == "" || q.Get("name") == fw.Name {
			out = append(out, *fw)
		}
	}
	items, p := page(out, q)
	writeJSON(w, http.StatusOK, map[string]any{"firewalls": nonNil(items), "meta": map[string]any{"pagination": p}})
}

// firewallCreate is the request body the API documents for POST /firewalls.
type firewallCreate struct {
	Name    string                       `json:"name"`
	Labels  map[string]string            `json:"labels"`
	Rules   []schema.FirewallRuleRequest `json:"rules"`
	ApplyTo []schema.FirewallResource    `json:"apply_to"`
}

func (c *Cloud) createFirewall(w http.ResponseWriter, r *http.Request) {
	var req firewallCreate
	if !c.decode(w, r, &req) {
		return
	}
	for _, fw := range c.firewalls {
		if fw.Name == req.Name {
			writeError(w, http.StatusConflict, "uniqueness_error", "firewall name is already used")
			return
		}
	}
	c.nextID++
	fw := &schema.Firewall{ID: c.nextID, Name: req.Name, Labels: req.Labels, Created: time.Now().UTC(), Rules: []schema.FirewallRule{}, AppliedTo: []schema.FirewallResource{}}
	for _, rule := range req.Rules {
		fw.Rules = append(fw.Rules, schema.FirewallRule{Direction: rule.Direction, SourceIPs: rule.SourceIPs, DestinationIPs: rule.DestinationIPs, Protocol: rule.Protocol, Port: rule.Port})
	}
	c.firewalls[fw.ID] = fw
	writeJSON(w, http.StatusCreated, map[string]any{"firewall": fw, "actions": []any{}})
}

// validHostname reports whether name is a valid server name: 1 to 63
// lower-case letters, digits and '-', neither first nor last a '-'.
func validHostname(name string) bool {
	return validWord(name, func(r rune) bool { return r >= 'a' && r <= 'z' || r >= '0' && r <= '9' }, "-")
}

// validLabel reports whether s is a valid label key or value: empty, or 1
// to 63 letters, digits, '.', '_' and '-' with a letter or digit first and
// last.
func validLabel(s string) bool {
	return s == "" || validWord(s, func(r rune) bool {
		return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
	}, "._-")
}

// validWord reports whether s is 1 to 63 runes that are all edge runes
// except inside ones, which may also be any of inner.
func validWord(s string, edge func(rune) bool, inner string) bool {
	runes := []rune(s)
	if len(runes) == 0 || len(runes) > 63 {
		return false
	}
	for i, r := range runes {
		if !edge(r) && (i == 0 || i == len(runes)-1 || !strings.ContainsRune(inner, r)) {
			return false
		}
	}
	return true
}
