// Package ec2 makes Stagely's machines on AWS EC2 with the official SDK
// (aws-sdk-go-v2). Each instance carries Stagely's tags, boots with the
// cloud-init user data, and sits in a security group with no inbound rule
// (a new group's only rule lets all outbound traffic out). Stagely makes
// that group itself in each region's default VPC and refuses to use it if
// anyone has added an inbound rule.
//
// RunInstances carries the idempotency key as its ClientToken: EC2 answers
// a repeated token with the instance the first call made, for at least a
// day after that instance is gone, so a key must never be reused for a new
// machine. The SDK retries throttled and failed calls, which the token
// makes safe.
//
// A machine's ID is "region/instance-id", because every EC2 call is
// regional.
package ec2

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	awsec2 "github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"

	"github.com/stagely-dev/stagely/provisioner"
)

// Config says which AWS account and regions to use and how. Zero fields
// take the defaults named on each.
type Config struct {
	// Namespace tells this Stagely's instances from any other's in the same
	// account. Default provisioner.DefaultNamespace.
	Namespace string
	// Region is where machines go when a Spec names none. Default: the AWS
	// configuration's region (AWS_REGION, or the profile's).
	Region string
	// Regions are the other regions a Spec may name. List looks in Region
	// and these only, so Create refuses any other: a machine made where
	// the reaper does not look could leak.
	Regions []string
	// InstanceType and Image apply when a Spec leaves Size or Image empty.
	// Defaults "t3.medium" and Canonical's current Ubuntu 24.04 AMI for
	// amd64, looked up by EC2 itself through the public SSM parameter.
	InstanceType, Image string
	// Endpoint is the EC2 API's base URL. Default: AWS's, per region.
	Endpoint string
	// Retry tunes the SDK's retries of throttled and failed calls.
	Retry provisioner.Retry
	// Credentials replaces the default credential chain (environment,
	// shared files and profiles, SSO, container and instance roles).
	Credentials aws.CredentialsProvider
}

// Provider makes instances in one AWS account.
type Provider struct {
	client  *awsec2.Client
	ns      string
	region  string
	regions []string
	cfg     Config
}

var _ provisioner.Provider = (*Provider)(nil)

// Tags Stagely puts on what it makes.
const (
	tagNamespace   = "stagely"
	tagEnvironment = "stagely:environment"
	tagKey         = "stagely:key"
)

const (
	// userDataLimit is EC2's limit on user data before base64.
	userDataLimit = 16 << 10
	defaultImage  = "resolve:ssm:/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
)

// New loads the AWS configuration and returns a provider for the account
// its credentials open. It fails, naming what is missing, when there is no
// region or no credentials.
func New(ctx context.Context, cfg Config) (*Provider, error) {
	ns, err := provisioner.Namespace(cfg.Namespace)
	if err != nil {
		return nil, fmt.Errorf("aws: %w", err)
	}
	if strings.HasPrefix(ns, "sg-") {
		// The security group is named after the namespace, and EC2
		// refuses group names that start with "sg-".
		return nil, fmt.Errorf("aws: namespace %q: EC2 security group names may not start with sg-; choose another namespace", ns)
	}
	r := cfg.Retry.WithDefaults()
	opts := []func(*config.LoadOptions) error{
		config.WithRetryer(func() aws.Retryer {
			standard := retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = r.Attempts
				o.BaseDelay = r.MinWait
				o.MaxBackoff = r.MaxWait
				// No client-side retry budget: the reconciler already
				// spaces its work, and a drained budget would fail calls
				// that the cloud would have taken.
				o.RateLimiter = ratelimit.None
			})
			// EC2's reads lag its writes: RunInstances right after
			// CreateSecurityGroup may not know the new group yet. The
			// ClientToken makes the repeat safe.
			return retry.AddWithErrorCodes(standard, "InvalidGroup.NotFound")
		}),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Credentials != nil {
		opts = append(opts, config.WithCredentialsProvider(cfg.Credentials))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("aws: load configuration: %w", err)
	}
	if awsCfg.Region == "" {
		return nil, errors.New("aws: no region: set AWS_REGION, a region in the AWS profile, or the provider's region")
	}
	if err := checkCredentials(ctx, awsCfg.Credentials); err != nil {
		return nil, err
	}
	regions := []string{awsCfg.Region}
	for _, reg := range cfg.Regions {
		if !slices.Contains(regions, reg) {
			regions = append(regions, reg)
		}
	}
	if cfg.InstanceType == "" {
		cfg.InstanceType = "t3.medium"
	}
	if cfg.Image == "" {
		cfg.Image = defaultImage
	}
	client := awsec2.NewFromConfig(awsCfg, func(o *awsec2.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
	})
	return &Provider{client: client, ns: ns, region: awsCfg.Region, regions: regions, cfg: cfg}, nil
}

// checkCredentials makes the credential chain find credentials now, so a
// server without any fails at start rather than at its first pull request.
func checkCredentials(ctx context.Context, creds aws.CredentialsProvider) error {
	const want = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run Stagely with an IAM role"
	if creds == nil {
		return errors.New("aws: no credentials: " + want)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := creds.Retrieve(ctx); err != nil {
		return fmt.Errorf("aws: no credentials: %s: %w", want, err)
	}
	return nil
}

// inRegion points one call at a region.
func inRegion(region string) func(*awsec2.Options) {
	return func(o *awsec2.Options) { o.Region = region }
}

// Create makes the instance for spec, or returns the one an earlier
// Create with spec.Key made.
func (p *Provider) Create(ctx context.Context, spec provisioner.Spec) (provisioner.Machine, error) {
	fail := func(err error) (provisioner.Machine, error) {
		return provisioner.Machine{}, fmt.Errorf("create machine for environment %d on aws: %w", spec.EnvironmentID, err)
	}
	if err := spec.Validate(); err != nil {
		return fail(err)
	}
	if err := provisioner.CheckUserDataSize(spec.UserData, userDataLimit); err != nil {
		return fail(err)
	}
	region := cmp.Or(spec.Region, p.region)
	if !slices.Contains(p.regions, region) {
		return fail(fmt.Errorf("%w: region %s is not one this Stagely uses (%s); the operator can add it", provisioner.ErrInvalidSpec, region, strings.Join(p.regions, ", ")))
	}
	group, err := p.securityGroup(ctx, region)
	if err != nil {
		return fail(err)
	}
	tags := p.tags(spec)
	out, err := p.client.RunInstances(ctx, &awsec2.RunInstancesInput{
		ImageId:          aws.String(cmp.Or(spec.Image, p.cfg.Image)),
		InstanceType:     types.InstanceType(cmp.Or(spec.Size, p.cfg.InstanceType)),
		MinCount:         aws.Int32(1),
		MaxCount:         aws.Int32(1),
		ClientToken:      aws.String(p.ns + "-" + spec.Key),
		UserData:         aws.String(base64.StdEncoding.EncodeToString([]byte(spec.UserData))),
		SecurityGroupIds: []string{group},
		// A machine that shuts itself down is gone, not a stopped
		// instance whose disk is billed until someone notices.
		InstanceInitiatedShutdownBehavior: types.ShutdownBehaviorTerminate,
		// IMDSv2 only, one hop: containers on the machine cannot reach the
		// metadata service, which holds the user data and its token.
		MetadataOptions: &types.InstanceMetadataOptionsRequest{
			HttpEndpoint:            types.InstanceMetadataEndpointStateEnabled,
			HttpTokens:              types.HttpTokensStateRequired,
			HttpPutResponseHopLimit: aws.Int32(1),
		},
		TagSpecifications: []types.TagSpecification{
			{ResourceType: types.ResourceTypeInstance, Tags: tags},
			{ResourceType: types.ResourceTypeVolume, Tags: tags},
		},
	}, inRegion(region))
	if err != nil {
		err = classify(err)
		if code(err) == "IdempotentParameterMismatch" {
			// The key's instance was made from another spec: by a build of
			// Stagely whose user data differed (an upgrade while it booted).
			// No create with this spec reaches it, and nothing would use
			// it: it goes, and the key is spent.
			if derr := p.destroyKey(ctx, spec.Key); derr != nil {
				return fail(fmt.Errorf("idempotency key %s was used before with a different spec, and its instance could not be destroyed: %w", spec.Key, errors.Join(err, derr)))
			}
			return fail(fmt.Errorf("idempotency key %s was used before with a different spec (%w); its instance is destroyed: %w", spec.Key, err, provisioner.ErrKeySpent))
		}
		return fail(err)
	}
	if len(out.Instances) != 1 {
		return fail(fmt.Errorf("RunInstances answered %d instances, want 1", len(out.Instances)))
	}
	m := p.machine(region, out.Instances[0])
	if m.State.Gone() {
		return fail(fmt.Errorf("idempotency key %s belongs to instance %s, which is %s: %w", spec.Key, m.ID, m.State, provisioner.ErrKeySpent))
	}
	return m, nil
}

// destroyKey destroys the instances of this namespace that key names.
func (p *Provider) destroyKey(ctx context.Context, key string) error {
	ms, err := p.List(ctx)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.Key == key {
			if err := p.Destroy(ctx, m.ID); err != nil {
				return err
			}
		}
	}
	return nil
}

// tags returns Stagely's tags and the caller's, sorted so that a retried
// RunInstances sends exactly the same request.
func (p *Provider) tags(spec provisioner.Spec) []types.Tag {
	all := map[string]string{}
	for k, v := range spec.Tags {
		if strings.HasPrefix(k, "stagely") || strings.HasPrefix(strings.ToLower(k), "aws:") || k == "Name" {
			continue
		}
		all[truncate(k, 128)] = truncate(v, 256)
	}
	all[tagNamespace] = p.ns
	all[tagEnvironment] = strconv.FormatInt(spec.EnvironmentID, 10)
	all[tagKey] = spec.Key
	all["Name"] = p.ns + "-" + spec.Key
	keys := make([]string, 0, len(all))
	for k := range all {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	tags := make([]types.Tag, 0, len(keys))
	for _, k := range keys {
		tags = append(tags, types.Tag{Key: aws.String(k), Value: aws.String(all[k])})
	}
	return tags
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// securityGroup returns the ID of Stagely's security group in the region's
// default VPC, making it if need be. It never adds an inbound rule, and
// refuses a group that has one.
func (p *Provider) securityGroup(ctx context.Context, region string) (string, error) {
	vpcs, err := p.client.DescribeVpcs(ctx, &awsec2.DescribeVpcsInput{
		Filters: []types.Filter{{Name: aws.String("isDefault"), Values: []string{"true"}}},
	}, inRegion(region))
	if err != nil {
		return "", fmt.Errorf("find the default VPC of %s: %w", region, classify(err))
	}
	if len(vpcs.Vpcs) == 0 {
		return "", fmt.Errorf("region %s has no default VPC, where Stagely launches its machines: create one (aws ec2 create-default-vpc)", region)
	}
	vpc := aws.ToString(vpcs.Vpcs[0].VpcId)
	name := p.ns + "-no-inbound"
	for try := 0; ; try++ {
		groups, err := p.client.DescribeSecurityGroups(ctx, &awsec2.DescribeSecurityGroupsInput{
			Filters: []types.Filter{
				{Name: aws.String("vpc-id"), Values: []string{vpc}},
				{Name: aws.String("group-name"), Values: []string{name}},
			},
		}, inRegion(region))
		if err != nil {
			return "", fmt.Errorf("look up security group %s in %s: %w", name, region, classify(err))
		}
		if len(groups.SecurityGroups) > 0 {
			g := groups.SecurityGroups[0]
			if len(g.IpPermissions) > 0 {
				return "", fmt.Errorf("security group %s (%s) in %s has an inbound rule; Stagely's machines accept no inbound traffic: remove the rule or the group", name, aws.ToString(g.GroupId), region)
			}
			return aws.ToString(g.GroupId), nil
		}
		created, err := p.client.CreateSecurityGroup(ctx, &awsec2.CreateSecurityGroupInput{
			GroupName:   aws.String(name),
			Description: aws.String("Stagely preview machines: no inbound traffic, all outbound"),
			VpcId:       aws.String(vpc),
			TagSpecifications: []types.TagSpecification{{
				ResourceType: types.ResourceTypeSecurityGroup,
				Tags:         []types.Tag{{Key: aws.String(tagNamespace), Value: aws.String(p.ns)}},
			}},
		}, inRegion(region))
		if err == nil {
			return aws.ToString(created.GroupId), nil
		}
		if err = classify(err); code(err) != "InvalidGroup.Duplicate" || try > 0 {
			return "", fmt.Errorf("create security group %s in %s: %w", name, region, err)
		}
		// Made by a concurrent create: look it up and check it.
	}
}

// State reports what the instance is doing.
func (p *Provider) State(ctx context.Context, id string) (provisioner.State, error) {
	region, instance, err := splitID(id)
	if err != nil {
		return "", err
	}
	out, err := p.client.DescribeInstances(ctx, &awsec2.DescribeInstancesInput{InstanceIds: []string{instance}}, inRegion(region))
	if code(classify(err)) == "InvalidInstanceID.NotFound" {
		return provisioner.StateMissing, nil
	}
	if err != nil {
		return "", fmt.Errorf("state of aws instance %s: %w", id, classify(err))
	}
	for _, r := range out.Reservations {
		for _, i := range r.Instances {
			return state(i.State), nil
		}
	}
	return provisioner.StateMissing, nil
}

// Destroy terminates the instance; one that is already gone is fine.
func (p *Provider) Destroy(ctx context.Context, id string) error {
	region, instance, err := splitID(id)
	if err != nil {
		return err
	}
	_, err = p.client.TerminateInstances(ctx, &awsec2.TerminateInstancesInput{InstanceIds: []string{instance}}, inRegion(region))
	if err != nil && code(classify(err)) != "InvalidInstanceID.NotFound" {
		return fmt.Errorf("destroy aws instance %s: %w", id, classify(err))
	}
	return nil
}

// List returns this Stagely's instances that are not shutting down or
// terminated, in every region it uses.
func (p *Provider) List(ctx context.Context) ([]provisioner.Machine, error) {
	var out []provisioner.Machine
	for _, region := range p.regions {
		pages := awsec2.NewDescribeInstancesPaginator(p.client, &awsec2.DescribeInstancesInput{
			Filters: []types.Filter{
				{Name: aws.String("tag:" + tagNamespace), Values: []string{p.ns}},
				{Name: aws.String("instance-state-name"), Values: []string{"pending", "running", "stopping", "stopped"}},
			},
		})
		for pages.HasMorePages() {
			page, err := pages.NextPage(ctx, inRegion(region))
			if err != nil {
				return nil, fmt.Errorf("list stagely machines on aws in %s: %w", region, classify(err))
			}
			for _, r := range page.Reservations {
				for _, i := range r.Instances {
					out = append(out, p.machine(region, i))
				}
			}
		}
	}
	return out, nil
}

func (p *Provider) machine(region string, i types.Instance) provisioner.Machine {
	m := provisioner.Machine{ID: region + "/" + aws.ToString(i.InstanceId), State: state(i.State), Created: aws.ToTime(i.LaunchTime)}
	for _, t := range i.Tags {
		switch aws.ToString(t.Key) {
		case tagEnvironment:
			m.EnvironmentID, _ = strconv.ParseInt(aws.ToString(t.Value), 10, 64)
		case tagKey:
			m.Key = aws.ToString(t.Value)
		}
	}
	return m
}

func state(s *types.InstanceState) provisioner.State {
	if s == nil {
		return provisioner.StatePending
	}
	switch s.Name {
	case types.InstanceStateNameRunning:
		return provisioner.StateRunning
	case types.InstanceStateNameStopping, types.InstanceStateNameStopped:
		return provisioner.StateStopped
	case types.InstanceStateNameShuttingDown, types.InstanceStateNameTerminated:
		return provisioner.StateTerminated
	default:
		return provisioner.StatePending
	}
}

func splitID(id string) (region, instance string, err error) {
	region, instance, ok := strings.Cut(id, "/")
	if !ok || region == "" || !strings.HasPrefix(instance, "i-") {
		return "", "", fmt.Errorf("aws machine ID %q is not region/i-…", id)
	}
	return region, instance, nil
}

// code returns the EC2 error code in err, if any.
func code(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// classify files an EC2 API error under the kind a person can act on.
func classify(err error) error {
	var ae smithy.APIError
	if err == nil || !errors.As(err, &ae) {
		return err
	}
	var kind error
	switch c := ae.ErrorCode(); {
	case c == "RequestLimitExceeded" || c == "Throttling" || c == "ThrottlingException":
		kind = provisioner.ErrRateLimited
	case c == "InstanceLimitExceeded" || c == "VcpuLimitExceeded" || c == "VolumeLimitExceeded" ||
		c == "SecurityGroupLimitExceeded" || c == "ResourceLimitExceeded" || c == "MaxSpotInstanceCountExceeded":
		kind = provisioner.ErrQuotaExceeded
	case strings.HasPrefix(c, "Insufficient") && strings.HasSuffix(c, "Capacity"):
		kind = provisioner.ErrNoCapacity
	case c == "AuthFailure" || c == "UnauthorizedOperation" || c == "InvalidClientTokenId" ||
		c == "SignatureDoesNotMatch" || c == "OptInRequired" || c == "Blocked":
		kind = provisioner.ErrBadCredentials
	case strings.HasPrefix(c, "InvalidAMIID.") || c == "InvalidParameterValue" || c == "InvalidParameterCombination" ||
		c == "InvalidParameter" || c == "Unsupported" || c == "InvalidInstanceType":
		kind = provisioner.ErrInvalidSpec
	}
	return &provisioner.Error{Kind: kind, Code: ae.ErrorCode(), Message: ae.ErrorMessage(), Err: err}
}
