package ec2

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awsec2 "github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// The fake is only worth its tests if it refuses what EC2 would refuse.
func TestFakeRefusesWhatEC2Would(t *testing.T) {
	f := newFakeCloud(t)
	creds := aws.Credentials{AccessKeyID: f.accessKey, SecretAccessKey: f.secret}
	send := func(body string, sign func(*http.Request)) *http.Response {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), "POST", f.srv.URL+"/", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
		if sign != nil {
			sign(req)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	signFor := func(body string) func(*http.Request) {
		return func(r *http.Request) {
			sum := sha256.Sum256([]byte(body))
			if err := v4.NewSigner().SignHTTP(context.Background(), creds, r, hex.EncodeToString(sum[:]), "ec2", "us-east-1", time.Now()); err != nil {
				t.Fatal(err)
			}
		}
	}
	describe := url.Values{"Action": {"DescribeVpcs"}, "Version": {"2016-11-15"}}.Encode()

	if resp := send(describe, signFor(describe)); resp.StatusCode != http.StatusOK {
		t.Fatalf("a correctly signed request got %s", resp.Status)
	}
	tampered := url.Values{"Action": {"DescribeVpcs"}, "Version": {"2016-11-15"}, "Filter.1.Name": {"isDefault"}}.Encode()
	if resp := send(tampered, signFor(describe)); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a body that does not match its signature got %s, want 401 AuthFailure", resp.Status)
	}

	// What the SDK itself would send, for an action Stagely must never call.
	p := newProvider(t, f, f.secret)
	_, err := p.client.AuthorizeSecurityGroupIngress(t.Context(), &awsec2.AuthorizeSecurityGroupIngressInput{
		GroupId: aws.String("sg-1"), IpPermissions: []types.IpPermission{{IpProtocol: aws.String("tcp"), FromPort: aws.Int32(22), ToPort: aws.Int32(22)}},
	}, inRegion("us-east-1"))
	if err == nil {
		t.Error("the fake accepted AuthorizeSecurityGroupIngress")
	}
	unsigned := send(describe, nil)

	f.mu.Lock()
	got := strings.Join(f.violations, "\n")
	f.violations = nil // seen here; they are the point of this test
	f.mu.Unlock()
	if unsigned.StatusCode != http.StatusBadRequest || !strings.Contains(got, "no SigV4 Authorization header") {
		t.Errorf("an unsigned request got %s; violations:\n%s", unsigned.Status, got)
	}
	if !strings.Contains(got, "unexpected action AuthorizeSecurityGroupIngress") {
		t.Errorf("violations do not name the ingress call:\n%s", got)
	}
}
