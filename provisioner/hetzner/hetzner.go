// Package hetzner makes Stagely's machines on Hetzner Cloud with the
// official SDK (hcloud-go). Each server carries Stagely's labels, boots
// with the cloud-init user data, and has a firewall with no rules applied
// from birth: on Hetzner a firewall with no inbound rule drops all inbound
// traffic and, with no outbound rule either, allows all outbound.
//
// Hetzner has no idempotency token. Create looks for a server labelled
// with the key before it makes one, and the server's name (unique in a
// project) holds the key too, so two racing creates cannot both succeed.
package hetzner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/stagely-dev/stagely/provisioner"
)

// Config says which Hetzner project to use and how. Zero fields take the
// defaults named on each.
type Config struct {
	// Token is an API token with read and write access to the project.
	// Default: $HCLOUD_TOKEN.
	Token string
	// Namespace tells this Stagely's servers from any other's in the same
	// project. Default provisioner.DefaultNamespace.
	Namespace string
	// Location, ServerType and Image apply when a Spec leaves its Region,
	// Size or Image empty. Defaults "fsn1", "cx22", "ubuntu-24.04".
	Location, ServerType, Image string
	// Endpoint is the API's base URL. Default: Hetzner's.
	Endpoint string
	// Retry tunes the SDK's retries of rate-limited requests.
	Retry provisioner.Retry
}

// Provider makes servers in one Hetzner Cloud project.
type Provider struct {
	client *hcloud.Client
	ns     string
	cfg    Config
}

var _ provisioner.Provider = (*Provider)(nil)

// Labels Stagely puts on what it makes.
const (
	labelNamespace   = "stagely"
	labelEnvironment = "stagely-environment"
	labelKey         = "stagely-key"
)

// userDataLimit is Hetzner's limit on user data.
const userDataLimit = 32 << 10

// New returns a provider for the project cfg's token opens. It fails,
// naming what is missing, when there is no token.
func New(cfg Config) (*Provider, error) {
	if cfg.Token == "" {
		cfg.Token = os.Getenv("HCLOUD_TOKEN")
	}
	if cfg.Token == "" {
		return nil, errors.New("hetzner: no API token: set HCLOUD_TOKEN to a read & write token of the project Stagely should use")
	}
	ns, err := provisioner.Namespace(cfg.Namespace)
	if err != nil {
		return nil, fmt.Errorf("hetzner: %w", err)
	}
	cfg.Location = cmp.Or(cfg.Location, "fsn1")
	cfg.ServerType = cmp.Or(cfg.ServerType, "cx22")
	cfg.Image = cmp.Or(cfg.Image, "ubuntu-24.04")
	retry := cfg.Retry.WithDefaults()
	opts := []hcloud.ClientOption{
		hcloud.WithToken(cfg.Token),
		hcloud.WithApplication("stagely", ""),
		// The SDK retries rate-limited and conflicting requests; these set
		// how often and how patiently.
		hcloud.WithRetryOpts(hcloud.RetryOpts{BackoffFunc: retry.Backoff, MaxRetries: retry.Attempts - 1}),
	}
	if cfg.Endpoint != "" {
		opts = append(opts, hcloud.WithEndpoint(cfg.Endpoint))
	}
	return &Provider{client: hcloud.NewClient(opts...), ns: ns, cfg: cfg}, nil
}

// Create makes the server for spec, or returns the one labelled with
// spec.Key.
func (p *Provider) Create(ctx context.Context, spec provisioner.Spec) (provisioner.Machine, error) {
	fail := func(err error) (provisioner.Machine, error) {
		return provisioner.Machine{}, fmt.Errorf("create machine for environment %d on hetzner: %w", spec.EnvironmentID, err)
	}
	if err := spec.Validate(); err != nil {
		return fail(err)
	}
	if err := provisioner.CheckUserDataSize(spec.UserData, userDataLimit); err != nil {
		return fail(err)
	}
	if m, ok, err := p.find(ctx, spec.Key); err != nil || ok {
		if err != nil {
			return fail(err)
		}
		return m, nil
	}
	fw, err := p.firewall(ctx)
	if err != nil {
		return fail(err)
	}
	labels := sanitizeLabels(spec.Tags)
	for k := range labels {
		if strings.HasPrefix(k, labelNamespace) {
			delete(labels, k) // only Stagely sets stagely* labels
		}
	}
	labels[labelNamespace] = p.ns
	labels[labelEnvironment] = strconv.FormatInt(spec.EnvironmentID, 10)
	labels[labelKey] = spec.Key
	res, _, err := p.client.Server.Create(ctx, hcloud.ServerCreateOpts{
		Name:             p.ns + "-" + spec.Key,
		ServerType:       &hcloud.ServerType{Name: cmp.Or(spec.Size, p.cfg.ServerType)},
		Image:            &hcloud.Image{Name: cmp.Or(spec.Image, p.cfg.Image)},
		Location:         &hcloud.Location{Name: cmp.Or(spec.Region, p.cfg.Location)},
		UserData:         spec.UserData,
		Labels:           labels,
		StartAfterCreate: hcloud.Ptr(true),
		// Applied at creation, so the server is never reachable unfirewalled.
		Firewalls: []*hcloud.ServerCreateFirewall{{Firewall: hcloud.Firewall{ID: fw}}},
	})
	if hcloud.IsError(err, hcloud.ErrorCodeUniquenessError) {
		// The name is taken: an earlier create with this key got there
		// (a retry after a lost answer, or a concurrent worker).
		if m, ok, ferr := p.find(ctx, spec.Key); ferr == nil && ok {
			return m, nil
		}
	}
	if err != nil {
		return fail(classify(err))
	}
	return p.machine(res.Server), nil
}

// find returns the live server labelled with key, if any.
func (p *Provider) find(ctx context.Context, key string) (provisioner.Machine, bool, error) {
	servers, err := p.client.Server.AllWithOpts(ctx, hcloud.ServerListOpts{
		ListOpts: hcloud.ListOpts{PerPage: 50, LabelSelector: labelNamespace + "=" + p.ns + "," + labelKey + "=" + key},
	})
	if err != nil {
		return provisioner.Machine{}, false, fmt.Errorf("look for a server with key %s: %w", key, classify(err))
	}
	for _, s := range servers {
		if s.Status != hcloud.ServerStatusDeleting {
			return p.machine(s), true, nil
		}
	}
	return provisioner.Machine{}, false, nil
}

// firewall returns the ID of Stagely's firewall, making it if need be, and
// refuses one that someone gave an inbound rule.
func (p *Provider) firewall(ctx context.Context) (int64, error) {
	name := p.ns + "-no-inbound"
	fw, _, err := p.client.Firewall.GetByName(ctx, name)
	if err != nil {
		return 0, fmt.Errorf("look up firewall %s: %w", name, classify(err))
	}
	if fw == nil {
		res, _, err := p.client.Firewall.Create(ctx, hcloud.FirewallCreateOpts{
			Name:   name,
			Labels: map[string]string{labelNamespace: p.ns},
			// No rules at all: no inbound traffic, all outbound.
		})
		if hcloud.IsError(err, hcloud.ErrorCodeUniquenessError) {
			// Made by a concurrent create; check it like any other.
			return p.firewall(ctx)
		}
		if err != nil {
			return 0, fmt.Errorf("create firewall %s: %w", name, classify(err))
		}
		return res.Firewall.ID, nil
	}
	for _, r := range fw.Rules {
		if r.Direction == hcloud.FirewallRuleDirectionIn {
			return 0, fmt.Errorf("firewall %s (%d) has an inbound rule (%s port %s); Stagely's machines accept no inbound traffic: remove the rule or the firewall", name, fw.ID, r.Protocol, deref(r.Port))
		}
	}
	return fw.ID, nil
}

func deref(s *string) string {
	if s == nil {
		return "any"
	}
	return *s
}

// State reports what the server is doing.
func (p *Provider) State(ctx context.Context, id string) (provisioner.State, error) {
	n, err := parseID(id)
	if err != nil {
		return "", err
	}
	s, _, err := p.client.Server.GetByID(ctx, n)
	if err != nil {
		return "", fmt.Errorf("state of hetzner server %s: %w", id, classify(err))
	}
	if s == nil {
		return provisioner.StateMissing, nil
	}
	return state(s.Status), nil
}

// Destroy deletes the server; a server that is already gone is fine.
func (p *Provider) Destroy(ctx context.Context, id string) error {
	n, err := parseID(id)
	if err != nil {
		return err
	}
	_, _, err = p.client.Server.DeleteWithResult(ctx, &hcloud.Server{ID: n})
	if err != nil && !hcloud.IsError(err, hcloud.ErrorCodeNotFound) {
		return fmt.Errorf("destroy hetzner server %s: %w", id, classify(err))
	}
	return nil
}

// List returns this Stagely's servers that are not being deleted.
func (p *Provider) List(ctx context.Context) ([]provisioner.Machine, error) {
	servers, err := p.client.Server.AllWithOpts(ctx, hcloud.ServerListOpts{
		ListOpts: hcloud.ListOpts{PerPage: 50, LabelSelector: labelNamespace + "=" + p.ns},
	})
	if err != nil {
		return nil, fmt.Errorf("list stagely machines on hetzner: %w", classify(err))
	}
	var out []provisioner.Machine
	for _, s := range servers {
		if s.Status != hcloud.ServerStatusDeleting {
			out = append(out, p.machine(s))
		}
	}
	return out, nil
}

func (p *Provider) machine(s *hcloud.Server) provisioner.Machine {
	env, _ := strconv.ParseInt(s.Labels[labelEnvironment], 10, 64)
	return provisioner.Machine{
		ID:            strconv.FormatInt(s.ID, 10),
		EnvironmentID: env,
		Key:           s.Labels[labelKey],
		State:         state(s.Status),
		Created:       s.Created,
	}
}

func state(s hcloud.ServerStatus) provisioner.State {
	switch s {
	case hcloud.ServerStatusRunning:
		return provisioner.StateRunning
	case hcloud.ServerStatusStopping, hcloud.ServerStatusOff:
		return provisioner.StateStopped
	case hcloud.ServerStatusDeleting:
		return provisioner.StateTerminated
	default: // initializing, starting, migrating, rebuilding, unknown
		return provisioner.StatePending
	}
}

func parseID(id string) (int64, error) {
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("hetzner server ID %q is not a positive number", id)
	}
	return n, nil
}

// classify files a Hetzner API error under the kind a person can act on.
func classify(err error) error {
	var he hcloud.Error
	if !errors.As(err, &he) {
		return err
	}
	var kind error
	switch he.Code {
	case hcloud.ErrorCodeRateLimitExceeded:
		kind = provisioner.ErrRateLimited
	case hcloud.ErrorCodeResourceLimitExceeded:
		kind = provisioner.ErrQuotaExceeded
	case hcloud.ErrorCodeResourceUnavailable, hcloud.ErrorCodePlacementError, hcloud.ErrorCodeNoSpaceLeftInLocation:
		kind = provisioner.ErrNoCapacity
	case hcloud.ErrorCodeUnauthorized, hcloud.ErrorCodeForbidden, hcloud.ErrorCodeTokenReadonly:
		kind = provisioner.ErrBadCredentials
	case hcloud.ErrorCodeInvalidInput, hcloud.ErrorCodeInvalidServerType:
		kind = provisioner.ErrInvalidSpec
	case "unavailable", hcloud.ErrorCodeServiceError, hcloud.ErrorCodeTimeout, hcloud.ErrorCodeMaintenance:
		// hcloud-go retries only 502, 504, conflicts and rate limits: the
		// reconciler retries these (creates are safe to repeat: the
		// server's name is the key).
		kind = provisioner.ErrUnavailable
	}
	return &provisioner.Error{Kind: kind, Code: string(he.Code), Message: he.Message, Err: err}
}

var labelJunk = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// sanitizeLabels bends free-form tags into Hetzner's label rules: names
// and values of at most 63 letters, digits, '.', '_' and '-', starting and
// ending with a letter or digit. Keys that end up empty are dropped.
func sanitizeLabels(tags map[string]string) map[string]string {
	out := make(map[string]string, len(tags)+3)
	clean := func(s string) string {
		s = labelJunk.ReplaceAllString(s, "_")
		if len(s) > 63 {
			s = s[:63]
		}
		return strings.Trim(s, "._-")
	}
	for k, v := range tags {
		if k = clean(k); k != "" {
			out[k] = clean(v)
		}
	}
	return out
}
