package ec2

import (
	"context"
	"encoding/base64"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/stagely-dev/stagely/provisioner"
	"github.com/stagely-dev/stagely/provisioner/internal/contract"
)

func TestMain(m *testing.M) {
	// Keep the developer's own AWS setup, and the instance metadata
	// service, out of the tests.
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
		"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"} {
		os.Unsetenv(k)
	}
	os.Setenv("AWS_CONFIG_FILE", os.DevNull)
	os.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	os.Exit(m.Run())
}

var fastRetry = provisioner.Retry{Attempts: 4, MinWait: time.Millisecond, MaxWait: 5 * time.Millisecond}

func newProvider(t *testing.T, f *fakeCloud, secret string) *Provider {
	t.Helper()
	p, err := New(t.Context(), Config{
		Region:      "eu-central-1",
		Regions:     []string{"us-east-1"},
		Endpoint:    f.srv.URL,
		Retry:       fastRetry,
		Credentials: credentials.NewStaticCredentialsProvider(f.accessKey, secret, ""),
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func spec(env, attempt int64) provisioner.Spec {
	return provisioner.Spec{
		EnvironmentID: env,
		Key:           provisioner.Key(env, attempt),
		Size:          "t3.large",
		Region:        "us-east-1",
		Image:         "ami-0123456789abcdef0",
		UserData:      "#cloud-config\n# environment " + strconv.FormatInt(env, 10) + "\n",
		Tags:          map[string]string{"repo": "octo/app", "pr": "12", "stagely:key": "spoofed", "aws:cloudformation": "no"},
	}
}

func TestContract(t *testing.T) {
	contract.Run(t, func(t *testing.T) contract.Harness {
		f := newFakeCloud(t)
		return contract.Harness{
			Cloud: f,
			New: func(t *testing.T, good bool) provisioner.Provider {
				secret := f.secret
				if !good {
					secret = "revoked/secret"
				}
				return newProvider(t, f, secret)
			},
			Spec:      spec,
			UnknownID: "us-east-1/i-0123456789abcdef0",
		}
	})
}

func TestRunInstancesSendsWhatTheMachineNeeds(t *testing.T) {
	f := newFakeCloud(t)
	p := newProvider(t, f, f.secret)
	s := spec(5, 2)
	s.Region, s.Size, s.Image = "", "", "" // the defaults
	m, err := p.Create(t.Context(), s)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(m.ID, "eu-central-1/i-") {
		t.Errorf("ID %q does not name the default region", m.ID)
	}
	run := f.runParams[0]
	want := map[string]string{
		"ImageId":                                 defaultImage,
		"InstanceType":                            "t3.medium",
		"ClientToken":                             "stagely-env5-2",
		"InstanceInitiatedShutdownBehavior":       "terminate",
		"MetadataOptions.HttpTokens":              "required",
		"MetadataOptions.HttpPutResponseHopLimit": "1",
	}
	for k, v := range want {
		if got := run.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if ud, _ := base64.StdEncoding.DecodeString(run.Get("UserData")); string(ud) != s.UserData {
		t.Errorf("UserData decodes to %q", ud)
	}
	tags := tagSpecs(run)
	wantTags := map[string]string{"stagely": "stagely", "stagely:environment": "5", "stagely:key": "env5-2", "Name": "stagely-env5-2", "repo": "octo/app", "pr": "12"}
	for _, rt := range []string{"instance", "volume"} {
		if len(tags[rt]) != len(wantTags) {
			t.Errorf("%s tags = %v, want %v", rt, tags[rt], wantTags)
		}
		for k, v := range wantTags {
			if tags[rt][k] != v {
				t.Errorf("%s tag %s = %q, want %q", rt, k, tags[rt][k], v)
			}
		}
	}

	// The security group: made once per region, in the default VPC, with
	// no inbound rule; the instance is in it.
	if len(f.groups) != 1 {
		t.Fatalf("%d security groups", len(f.groups))
	}
	g := f.groups[0]
	if g.name != "stagely-no-inbound" || g.vpc != vpcOf("eu-central-1") || g.ingress != 0 || g.tags["stagely"] != "stagely" {
		t.Errorf("security group %+v", g)
	}
	if run.Get("SecurityGroupId.1") != g.id {
		t.Errorf("instance in group %q, want %q", run.Get("SecurityGroupId.1"), g.id)
	}
	if _, err := p.Create(t.Context(), spec(6, 1)); err != nil { // us-east-1
		t.Fatal(err)
	}
	if _, err := p.Create(t.Context(), spec(7, 1)); err != nil { // us-east-1 again
		t.Fatal(err)
	}
	if n := f.count("us-east-1 CreateSecurityGroup") + f.count("eu-central-1 CreateSecurityGroup"); n != 2 {
		t.Errorf("%d security groups created, want one per region", n)
	}
}

func TestSecurityGroupWithAnInboundRuleIsRefused(t *testing.T) {
	f := newFakeCloud(t)
	f.groups = append(f.groups, &fakeGroup{id: "sg-00000000000000001", name: "stagely-no-inbound", vpc: vpcOf("us-east-1"), region: "us-east-1", ingress: 1})
	_, err := newProvider(t, f, f.secret).Create(t.Context(), spec(5, 1))
	if err == nil || !strings.Contains(err.Error(), "has an inbound rule") {
		t.Fatalf("err = %v", err)
	}
	if n := f.count("us-east-1 RunInstances"); n != 0 {
		t.Errorf("%d RunInstances behind an open group", n)
	}
}

func TestRegionsOutsideTheConfiguredOnesAreRefused(t *testing.T) {
	f := newFakeCloud(t)
	s := spec(5, 1)
	s.Region = "ap-south-1"
	_, err := newProvider(t, f, f.secret).Create(t.Context(), s)
	if !errors.Is(err, provisioner.ErrInvalidSpec) || !strings.Contains(err.Error(), "ap-south-1") {
		t.Fatalf("err = %v", err)
	}
}

func TestRegionWithoutADefaultVPCIsToldAsSuch(t *testing.T) {
	f := newFakeCloud(t)
	f.noDefaultVPC["us-east-1"] = true
	_, err := newProvider(t, f, f.secret).Create(t.Context(), spec(5, 1))
	if err == nil || !strings.Contains(err.Error(), "no default VPC") {
		t.Fatalf("err = %v", err)
	}
}

// A create retried with another spec (a new build of Stagely took over
// while the machine booted: another agent URL and checksum in the user
// data) cannot reach the key's instance, and nothing would use it: the
// instance is destroyed and the key spent, so that the deployer moves to
// a new attempt instead of failing every push for good.
func TestRetriedCreateWithAnotherSpecSpendsTheKey(t *testing.T) {
	f := newFakeCloud(t)
	p := newProvider(t, f, f.secret)
	if _, err := p.Create(t.Context(), spec(5, 1)); err != nil {
		t.Fatal(err)
	}
	s := spec(5, 1)
	s.UserData += "# a new build's agent\n"
	_, err := p.Create(t.Context(), s)
	if !errors.Is(err, provisioner.ErrKeySpent) || !strings.Contains(err.Error(), "IdempotentParameterMismatch") {
		t.Fatalf("err = %v, want ErrKeySpent naming the mismatch", err)
	}
	if n := len(f.Live()); n != 0 {
		t.Errorf("%d instances of the spent key left running", n)
	}
}

func TestKeyOfATerminatedInstanceIsNotReused(t *testing.T) {
	f := newFakeCloud(t)
	p := newProvider(t, f, f.secret)
	m, err := p.Create(t.Context(), spec(5, 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Destroy(t.Context(), m.ID); err != nil {
		t.Fatal(err)
	}
	_, err = p.Create(t.Context(), spec(5, 1))
	if !errors.Is(err, provisioner.ErrKeySpent) {
		t.Fatalf("err = %v, want ErrKeySpent", err)
	}
}

func TestLaunchWaitsOutEC2sLaggingReads(t *testing.T) {
	f := newFakeCloud(t)
	f.describeNotFoundFor = 2
	f.boot = 1
	m, err := provisioner.Launch(t.Context(), newProvider(t, f, f.secret), spec(5, 1), provisioner.Wait{Timeout: 5 * time.Second, Interval: time.Millisecond})
	if err != nil || m.State != provisioner.StateRunning {
		t.Fatalf("Launch = %+v, %v", m, err)
	}
}

func TestCapacityErrorsAreRetriedByTheSDK(t *testing.T) {
	f := newFakeCloud(t)
	f.Fail(contract.Capacity, 2)
	if _, err := newProvider(t, f, f.secret).Create(t.Context(), spec(5, 1)); err != nil {
		t.Fatalf("Create after two 500s: %v", err)
	}
	if n := f.count("us-east-1 RunInstances"); n != 3 {
		t.Errorf("%d RunInstances, want 3", n)
	}
	if n := len(f.Live()); n != 1 {
		t.Errorf("%d machines", n)
	}
}

func TestNewNamesWhatIsMissing(t *testing.T) {
	ctx := context.Background()
	_, err := New(ctx, Config{})
	if err == nil || !strings.Contains(err.Error(), "AWS_REGION") {
		t.Fatalf("New without a region: %v", err)
	}
	_, err = New(ctx, Config{Region: "eu-central-1"})
	if err == nil || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Fatalf("New without credentials: %v", err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE0001")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_REGION", "eu-west-1")
	p, err := New(ctx, Config{})
	if err != nil {
		t.Fatalf("New with credentials and region from the environment: %v", err)
	}
	if p.region != "eu-west-1" {
		t.Errorf("region %q", p.region)
	}
}

func TestRateLimitIsRetriedAsOftenAsConfigured(t *testing.T) {
	f := newFakeCloud(t)
	f.Fail(contract.RateLimit, 1000)
	_, err := newProvider(t, f, f.secret).List(t.Context())
	if !errors.Is(err, provisioner.ErrRateLimited) {
		t.Fatalf("err = %v", err)
	}
	if n := f.count("eu-central-1 DescribeInstances"); n != fastRetry.Attempts {
		t.Errorf("%d tries, want %d", n, fastRetry.Attempts)
	}
}

func TestFirstCreateInARegionWaitsOutItsNewSecurityGroup(t *testing.T) {
	// EC2's reads lag its writes: RunInstances right after
	// CreateSecurityGroup may not know the group yet.
	f := newFakeCloud(t)
	f.groupNotFoundFor = 2
	if _, err := newProvider(t, f, f.secret).Create(t.Context(), spec(5, 1)); err != nil {
		t.Fatalf("Create with a security group EC2 has just made: %v", err)
	}
	if n := len(f.Live()); n != 1 {
		t.Errorf("%d machines, want 1", n)
	}
}

func TestNamespaceStartingWithSgIsRefusedAtStart(t *testing.T) {
	// Stagely's group is named after the namespace, and EC2 refuses group
	// names that start with "sg-": such a namespace must fail New, not
	// every Create.
	f := newFakeCloud(t)
	p, err := New(t.Context(), Config{
		Namespace:   "sg-previews",
		Region:      "us-east-1",
		Endpoint:    f.srv.URL,
		Retry:       fastRetry,
		Credentials: credentials.NewStaticCredentialsProvider(f.accessKey, f.secret, ""),
	})
	if err != nil {
		if !strings.Contains(err.Error(), "sg-") {
			t.Fatalf("New refused the namespace without saying why: %v", err)
		}
		return
	}
	if _, err := p.Create(t.Context(), spec(5, 1)); err != nil {
		t.Fatalf("New took namespace sg-previews, and Create fails: %v", err)
	}
}
