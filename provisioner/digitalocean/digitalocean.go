// Package digitalocean makes Stagely's machines on DigitalOcean with the
// official SDK (godo). Each droplet carries Stagely's tags and boots with
// the cloud-init user data. A cloud firewall with no inbound rule (all
// outbound allowed) applies to Stagely's namespace tag, so it covers every
// droplet from the moment the droplet exists: DigitalOcean's default,
// without a firewall, is to let everything in.
//
// DigitalOcean has no idempotency token. Create looks for a droplet tagged
// with the key before it makes one, and after any answer that leaves in
// doubt whether the droplet was made (a 5xx, a lost connection) it looks
// again before it tries again. For that reason this package retries by
// itself rather than through godo's retrying client, which would resend the
// create blindly.
package digitalocean

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/digitalocean/godo"

	"github.com/stagely-dev/stagely/provisioner"
)

// Config says which DigitalOcean account to use and how. Zero fields take
// the defaults named on each.
type Config struct {
	// Token is an API token with write scope. Default: $DIGITALOCEAN_TOKEN,
	// then $DIGITALOCEAN_ACCESS_TOKEN (doctl's name for it).
	Token string
	// Namespace tells this Stagely's droplets from any other's in the same
	// account; it is also the tag the firewall applies to. Default
	// provisioner.DefaultNamespace.
	Namespace string
	// Region, Size and Image apply when a Spec leaves them empty. Defaults
	// "fra1", "s-2vcpu-4gb", "ubuntu-24-04-x64".
	Region, Size, Image string
	// Endpoint is the API's base URL. Default: DigitalOcean's.
	Endpoint string
	// Retry tunes the retries of rate-limited and failed requests.
	Retry provisioner.Retry
}

// Provider makes droplets in one DigitalOcean account.
type Provider struct {
	client *godo.Client
	ns     string
	cfg    Config
	retry  provisioner.Retry
}

var _ provisioner.Provider = (*Provider)(nil)

// userDataLimit is DigitalOcean's limit on user data.
const userDataLimit = 64 << 10

// New returns a provider for the account cfg's token opens. It fails,
// naming what is missing, when there is no token.
func New(cfg Config) (*Provider, error) {
	for _, env := range []string{"DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN"} {
		if cfg.Token == "" {
			cfg.Token = os.Getenv(env)
		}
	}
	if cfg.Token == "" {
		return nil, errors.New("digitalocean: no API token: set DIGITALOCEAN_TOKEN to a token with write scope")
	}
	ns, err := provisioner.Namespace(cfg.Namespace)
	if err != nil {
		return nil, fmt.Errorf("digitalocean: %w", err)
	}
	cfg.Region = cmp.Or(cfg.Region, "fra1")
	cfg.Size = cmp.Or(cfg.Size, "s-2vcpu-4gb")
	cfg.Image = cmp.Or(cfg.Image, "ubuntu-24-04-x64")
	opts := []godo.ClientOpt{godo.SetUserAgent("stagely")}
	if cfg.Endpoint != "" {
		opts = append(opts, godo.SetBaseURL(strings.TrimSuffix(cfg.Endpoint, "/")+"/"))
	}
	hc := &http.Client{Transport: bearer{token: cfg.Token, base: http.DefaultTransport}}
	client, err := godo.New(hc, opts...)
	if err != nil {
		return nil, fmt.Errorf("digitalocean: %w", err)
	}
	return &Provider{client: client, ns: ns, cfg: cfg, retry: cfg.Retry.WithDefaults()}, nil
}

// bearer adds the API token to every request.
type bearer struct {
	token string
	base  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(r)
}

// Tags Stagely puts on its droplets, besides the namespace itself.
func (p *Provider) envTag(id int64) string   { return p.ns + ":env:" + strconv.FormatInt(id, 10) }
func (p *Provider) keyTag(key string) string { return p.ns + ":key:" + key }

// Create makes the droplet for spec, or returns the one tagged with
// spec.Key.
func (p *Provider) Create(ctx context.Context, spec provisioner.Spec) (provisioner.Machine, error) {
	fail := func(err error) (provisioner.Machine, error) {
		return provisioner.Machine{}, fmt.Errorf("create machine for environment %d on digitalocean: %w", spec.EnvironmentID, err)
	}
	if err := spec.Validate(); err != nil {
		return fail(err)
	}
	if err := provisioner.CheckUserDataSize(spec.UserData, userDataLimit); err != nil {
		return fail(err)
	}
	if err := p.firewall(ctx); err != nil {
		return fail(err)
	}
	image := godo.DropletCreateImage{Slug: cmp.Or(spec.Image, p.cfg.Image)}
	if id, err := strconv.Atoi(image.Slug); err == nil {
		image = godo.DropletCreateImage{ID: id} // a snapshot or custom image
	}
	req := &godo.DropletCreateRequest{
		Name:       p.ns + "-" + spec.Key,
		Region:     cmp.Or(spec.Region, p.cfg.Region),
		Size:       cmp.Or(spec.Size, p.cfg.Size),
		Image:      image,
		UserData:   spec.UserData,
		Tags:       p.tags(spec),
		Monitoring: true,
	}
	for n := 0; ; n++ {
		var list []godo.Droplet
		if err := p.call(ctx, func() (resp *godo.Response, err error) {
			list, resp, err = p.client.Droplets.ListByTag(ctx, p.keyTag(spec.Key), &godo.ListOptions{PerPage: 200})
			return resp, err
		}); err != nil {
			return fail(fmt.Errorf("look for a droplet with key %s: %w", spec.Key, err))
		}
		if len(list) > 0 {
			return p.machine(&list[0]), nil
		}
		d, resp, err := p.client.Droplets.Create(ctx, req)
		if err == nil {
			return p.machine(d), nil
		}
		if !transient(resp, err) || n+1 >= p.retry.Attempts || ctx.Err() != nil {
			return fail(classify(err))
		}
		// Whether or not the droplet was made, the look-up above tells on
		// the next round.
		if err := p.pause(ctx, n, resp); err != nil {
			return fail(err)
		}
	}
}

// tags returns Stagely's tags plus the caller's, bent to DigitalOcean's
// rules for tag names (letters, digits, '_', '-' and ':').
func (p *Provider) tags(spec provisioner.Spec) []string {
	tags := []string{p.ns, p.envTag(spec.EnvironmentID), p.keyTag(spec.Key)}
	for k, v := range spec.Tags {
		tag := tagJunk.ReplaceAllString(k+":"+v, "_")
		if len(tag) > 255 {
			tag = tag[:255]
		}
		if tag != p.ns && !strings.HasPrefix(tag, p.ns+":") && !slices.Contains(tags, tag) {
			tags = append(tags, tag)
		}
	}
	slices.Sort(tags[3:])
	return tags
}

var tagJunk = regexp.MustCompile(`[^A-Za-z0-9_:-]+`)

// firewall makes sure Stagely's firewall exists, applies to the namespace
// tag and has no inbound rule. It runs before every create: a droplet made
// while the firewall is missing would be open to the internet.
func (p *Provider) firewall(ctx context.Context) error {
	name := p.ns + "-no-inbound"
	var found *godo.Firewall
	opt := &godo.ListOptions{PerPage: 200}
	for found == nil {
		var page []godo.Firewall
		var resp *godo.Response
		if err := p.call(ctx, func() (r *godo.Response, err error) {
			page, resp, err = p.client.Firewalls.List(ctx, opt)
			return resp, err
		}); err != nil {
			return fmt.Errorf("look up firewall %s: %w", name, err)
		}
		for i := range page {
			if page[i].Name == name {
				found = &page[i]
			}
		}
		if resp.Links == nil || resp.Links.IsLastPage() {
			break
		}
		cur, err := resp.Links.CurrentPage()
		if err != nil {
			return fmt.Errorf("look up firewall %s: %w", name, err)
		}
		opt.Page = cur + 1
	}
	if found != nil {
		switch {
		case len(found.InboundRules) > 0:
			r := found.InboundRules[0]
			return fmt.Errorf("firewall %s (%s) has an inbound rule (%s ports %s); Stagely's machines accept no inbound traffic: remove the rule or the firewall", name, found.ID, r.Protocol, r.PortRange)
		case !slices.Contains(found.Tags, p.ns):
			return fmt.Errorf("firewall %s (%s) does not apply to tag %s, so it would not cover Stagely's droplets: add the tag or remove the firewall", name, found.ID, p.ns)
		}
		return nil
	}
	// A firewall may only name a tag that exists, and in a fresh account
	// no droplet has made the namespace tag yet.
	if err := p.ensureTag(ctx, p.ns); err != nil {
		return fmt.Errorf("create firewall %s: %w", name, err)
	}
	everywhere := &godo.Destinations{Addresses: []string{"0.0.0.0/0", "::/0"}}
	err := p.call(ctx, func() (resp *godo.Response, err error) {
		_, resp, err = p.client.Firewalls.Create(ctx, &godo.FirewallRequest{
			Name:         name,
			InboundRules: []godo.InboundRule{},
			OutboundRules: []godo.OutboundRule{
				{Protocol: "tcp", PortRange: "1-65535", Destinations: everywhere},
				{Protocol: "udp", PortRange: "1-65535", Destinations: everywhere},
				{Protocol: "icmp", Destinations: everywhere},
			},
			Tags: []string{p.ns},
		})
		return resp, err
	})
	if err != nil {
		return fmt.Errorf("create firewall %s: %w", name, err)
	}
	return nil
}

// ensureTag makes the tag unless it exists. A create that fails is
// forgiven when the tag is there after all (made by a concurrent create).
func (p *Provider) ensureTag(ctx context.Context, name string) error {
	err := p.call(ctx, func() (resp *godo.Response, err error) {
		_, resp, err = p.client.Tags.Create(ctx, &godo.TagCreateRequest{Name: name})
		return resp, err
	})
	if err == nil {
		return nil
	}
	if gerr := p.call(ctx, func() (resp *godo.Response, err error) {
		_, resp, err = p.client.Tags.Get(ctx, name)
		return resp, err
	}); gerr == nil {
		return nil
	}
	return fmt.Errorf("create tag %s: %w", name, err)
}

// State reports what the droplet is doing.
func (p *Provider) State(ctx context.Context, id string) (provisioner.State, error) {
	n, err := parseID(id)
	if err != nil {
		return "", err
	}
	var d *godo.Droplet
	err = p.call(ctx, func() (resp *godo.Response, err error) {
		d, resp, err = p.client.Droplets.Get(ctx, n)
		return resp, err
	})
	if notFound(err) {
		return provisioner.StateMissing, nil
	}
	if err != nil {
		return "", fmt.Errorf("state of digitalocean droplet %s: %w", id, err)
	}
	return state(d.Status), nil
}

// Destroy deletes the droplet; a droplet that is already gone is fine.
func (p *Provider) Destroy(ctx context.Context, id string) error {
	n, err := parseID(id)
	if err != nil {
		return err
	}
	err = p.call(ctx, func() (*godo.Response, error) { return p.client.Droplets.Delete(ctx, n) })
	if err != nil && !notFound(err) {
		return fmt.Errorf("destroy digitalocean droplet %s: %w", id, err)
	}
	return nil
}

// List returns this Stagely's droplets.
func (p *Provider) List(ctx context.Context) ([]provisioner.Machine, error) {
	var out []provisioner.Machine
	opt := &godo.ListOptions{PerPage: 200}
	for {
		var page []godo.Droplet
		var resp *godo.Response
		if err := p.call(ctx, func() (r *godo.Response, err error) {
			page, resp, err = p.client.Droplets.ListByTag(ctx, p.ns, opt)
			return resp, err
		}); err != nil {
			return nil, fmt.Errorf("list stagely machines on digitalocean: %w", err)
		}
		for i := range page {
			if m := p.machine(&page[i]); !m.State.Gone() {
				out = append(out, m)
			}
		}
		if resp.Links == nil || resp.Links.IsLastPage() {
			return out, nil
		}
		cur, err := resp.Links.CurrentPage()
		if err != nil {
			return nil, fmt.Errorf("list stagely machines on digitalocean: %w", err)
		}
		opt.Page = cur + 1
	}
}

func (p *Provider) machine(d *godo.Droplet) provisioner.Machine {
	m := provisioner.Machine{ID: strconv.Itoa(d.ID), State: state(d.Status)}
	for _, t := range d.Tags {
		if v, ok := strings.CutPrefix(t, p.ns+":env:"); ok {
			m.EnvironmentID, _ = strconv.ParseInt(v, 10, 64)
		}
		if v, ok := strings.CutPrefix(t, p.ns+":key:"); ok {
			m.Key = v
		}
	}
	m.Created, _ = time.Parse(time.RFC3339, d.Created)
	return m
}

func state(s string) provisioner.State {
	switch s {
	case "active":
		return provisioner.StateRunning
	case "off":
		return provisioner.StateStopped
	case "archive":
		return provisioner.StateTerminated
	default: // "new"
		return provisioner.StatePending
	}
}

func parseID(id string) (int, error) {
	n, err := strconv.Atoi(id)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("digitalocean droplet ID %q is not a positive number", id)
	}
	return n, nil
}

// call runs a request that is safe to repeat, retrying passing failures
// (rate limits, 5xx, dropped connections) with backoff.
func (p *Provider) call(ctx context.Context, fn func() (*godo.Response, error)) error {
	for n := 0; ; n++ {
		resp, err := fn()
		if err == nil {
			return nil
		}
		if !transient(resp, err) || n+1 >= p.retry.Attempts || ctx.Err() != nil {
			return classify(err)
		}
		if err := p.pause(ctx, n, resp); err != nil {
			return err
		}
	}
}

// pause waits before retry n, or as long as a Retry-After header asks
// (within the configured maximum).
func (p *Provider) pause(ctx context.Context, n int, resp *godo.Response) error {
	wait := p.retry.Backoff(n)
	if resp != nil && resp.Response != nil {
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
			wait = min(time.Duration(s)*time.Second, p.retry.MaxWait)
		}
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// transient reports whether a failed request may succeed if sent again.
func transient(resp *godo.Response, err error) bool {
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	if resp == nil || resp.Response == nil {
		return false
	}
	c := resp.StatusCode
	return c == http.StatusTooManyRequests || c >= 500 && c != http.StatusNotImplemented
}

func notFound(err error) bool {
	var er *godo.ErrorResponse
	return errors.As(err, &er) && er.Response != nil && er.Response.StatusCode == http.StatusNotFound
}

// classify files a DigitalOcean API error under the kind a person can act
// on. DigitalOcean tells quotas and capacity from other refusals (all 422)
// only in its message.
func classify(err error) error {
	var er *godo.ErrorResponse
	if !errors.As(err, &er) || er.Response == nil {
		return err
	}
	status := er.Response.StatusCode
	msg := strings.ToLower(er.Message)
	var kind error
	switch {
	case status == http.StatusTooManyRequests:
		kind = provisioner.ErrRateLimited
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		kind = provisioner.ErrBadCredentials
	case status == http.StatusUnprocessableEntity && strings.Contains(msg, "limit"):
		kind = provisioner.ErrQuotaExceeded
	case status == http.StatusUnprocessableEntity && (strings.Contains(msg, "not available") || strings.Contains(msg, "unavailable") || strings.Contains(msg, "capacity")):
		kind = provisioner.ErrNoCapacity
	case status == http.StatusUnprocessableEntity || status == http.StatusBadRequest:
		kind = provisioner.ErrInvalidSpec
	}
	return &provisioner.Error{Kind: kind, Code: strconv.Itoa(status), Message: er.Message, Err: err}
}
