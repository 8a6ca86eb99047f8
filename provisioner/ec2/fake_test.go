package ec2

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"io"
	"maps"
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

	"github.com/stagely-dev/stagely/provisioner/internal/contract"
)

// fakeCloud is the part of EC2's Query API Stagely uses, on loopback:
// form-encoded POSTs answered in XML. It is strict. Every request must
// carry a SigV4 Authorization header whose signature the fake recomputes
// with the secret key it knows; an unknown action (such as any call that
// would open an inbound port) or parameter fails the test. Each region,
// taken from the signature's scope, has its own default VPC and instances.
type fakeCloud struct {
	t                   *testing.T
	srv                 *httptest.Server
	accessKey, secret   string
	mu                  sync.Mutex
	nextID              int
	instances           map[string]*fakeInstance // by instance ID
	groups              []*fakeGroup
	tokens              map[string]tokenUse // region+ClientToken -> first use
	noDefaultVPC        map[string]bool
	boot                int
	failures            map[contract.Failure]int
	requests            []string // "region Action"
	violations          []string
	runParams           []url.Values // every RunInstances, as sent
	describeNotFoundFor int          // answer NotFound this many times for a new instance, as EC2's lagging reads do
	// groupNotFoundFor is how many RunInstances do not yet know a new
	// security group. "Eventual consistency in the Amazon EC2 API": after
	// CreateSecurityGroup, a command that uses the new group's ID may get
	// InvalidGroup.NotFound.
	groupNotFoundFor int
}

type fakeInstance struct {
	id, region, instanceType, image, userData, token, state string
	tags                                                    map[string]string
	groups                                                  []string
	launched                                                time.Time
	reads, notFound                                         int
}

type fakeGroup struct {
	id, name, description, vpc, region string
	tags                               map[string]string
	ingress                            int
	notFound                           int
}

type tokenUse struct {
	params   string
	instance string
}

func newFakeCloud(t *testing.T) *fakeCloud {
	f := &fakeCloud{
		t: t, accessKey: "AKIAFAKEFAKEFAKE0001", secret: "fake/secret/key/0123456789abcdefghijklm",
		nextID: 0x1000, instances: map[string]*fakeInstance{}, tokens: map[string]tokenUse{},
		noDefaultVPC: map[string]bool{}, failures: map[contract.Failure]int{},
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		f.srv.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, v := range f.violations {
			t.Errorf("fake ec2: %s", v)
		}
	})
	return f
}

const xmlns = "http://ec2.amazonaws.com/doc/2016-11-15/"

func writeXML(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(status)
	io.WriteString(w, xml.Header)
	xml.NewEncoder(w).Encode(v)
}

type xmlError struct {
	XMLName xml.Name `xml:"Response"`
	Code    string   `xml:"Errors>Error>Code"`
	Message string   `xml:"Errors>Error>Message"`
	Request string   `xml:"RequestID"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeXML(w, status, xmlError{Code: code, Message: msg, Request: "req-" + code})
}

func (f *fakeCloud) violate(w http.ResponseWriter, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	f.violations = append(f.violations, msg)
	writeError(w, http.StatusBadRequest, "InvalidRequest", msg)
}

func (f *fakeCloud) take(k contract.Failure) bool {
	if f.failures[k] > 0 {
		f.failures[k]--
		return true
	}
	return false
}

var credential = regexp.MustCompile(`^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([a-z0-9-]+)/ec2/aws4_request, SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$`)

// verify checks the request's SigV4 signature and returns the region in
// its scope. A missing or malformed header is a violation (the SDK would
// never send one); a wrong key or signature is the cloud's AuthFailure.
func (f *fakeCloud) verify(w http.ResponseWriter, r *http.Request, body []byte) (string, bool) {
	m := credential.FindStringSubmatch(r.Header.Get("Authorization"))
	if m == nil {
		f.violate(w, "no SigV4 Authorization header: %q", r.Header.Get("Authorization"))
		return "", false
	}
	key, date, region, signed, signature := m[1], m[2], m[3], m[4], m[5]
	amzDate := r.Header.Get("X-Amz-Date")
	if !strings.HasPrefix(amzDate, date) {
		f.violate(w, "X-Amz-Date %q does not match the scope date %s", amzDate, date)
		return "", false
	}
	if key != f.accessKey {
		writeError(w, http.StatusUnauthorized, "AuthFailure", "AWS was not able to validate the provided access credentials")
		return "", false
	}
	var canon strings.Builder
	canon.WriteString(r.Method + "\n" + r.URL.EscapedPath() + "\n" + r.URL.Query().Encode() + "\n")
	names := strings.Split(signed, ";")
	if !slices.Contains(names, "host") || !slices.Contains(names, "x-amz-date") {
		f.violate(w, "SignedHeaders %q lacks host or x-amz-date", signed)
		return "", false
	}
	for _, name := range names {
		var v string
		switch name {
		case "host":
			v = r.Host
		case "content-length":
			v = strconv.FormatInt(r.ContentLength, 10)
		default:
			v = strings.Join(r.Header.Values(name), ",")
		}
		canon.WriteString(name + ":" + strings.Join(strings.Fields(v), " ") + "\n")
	}
	sum := sha256.Sum256(body)
	canon.WriteString("\n" + signed + "\n" + hex.EncodeToString(sum[:]))
	canonSum := sha256.Sum256([]byte(canon.String()))
	scope := date + "/" + region + "/ec2/aws4_request"
	toSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(canonSum[:])
	k := []byte("AWS4" + f.secret)
	for _, part := range []string{date, region, "ec2", "aws4_request", toSign} {
		mac := hmac.New(sha256.New, k)
		mac.Write([]byte(part))
		k = mac.Sum(nil)
	}
	if !hmac.Equal([]byte(hex.EncodeToString(k)), []byte(signature)) {
		writeError(w, http.StatusUnauthorized, "AuthFailure", "AWS was not able to validate the provided access credentials")
		return "", false
	}
	return region, true
}

// allowed lists, per action, the parameters the fake understands.
var allowed = map[string][]*regexp.Regexp{
	"DescribeVpcs":           params(`Filter\.\d+\.Name`, `Filter\.\d+\.Value\.\d+`),
	"DescribeSecurityGroups": params(`Filter\.\d+\.Name`, `Filter\.\d+\.Value\.\d+`),
	"CreateSecurityGroup":    params(`GroupName`, `GroupDescription`, `VpcId`, `TagSpecification\.\d+\.ResourceType`, `TagSpecification\.\d+\.Tag\.\d+\.(Key|Value)`),
	"RunInstances": params(`ImageId`, `InstanceType`, `MinCount`, `MaxCount`, `ClientToken`, `UserData`, `SecurityGroupId\.\d+`,
		`InstanceInitiatedShutdownBehavior`, `MetadataOptions\.(HttpEndpoint|HttpTokens|HttpPutResponseHopLimit)`,
		`TagSpecification\.\d+\.ResourceType`, `TagSpecification\.\d+\.Tag\.\d+\.(Key|Value)`),
	"DescribeInstances":  params(`InstanceId\.\d+`, `Filter\.\d+\.Name`, `Filter\.\d+\.Value\.\d+`, `MaxResults`, `NextToken`),
	"TerminateInstances": params(`InstanceId\.\d+`),
}

func params(patterns ...string) []*regexp.Regexp {
	var out []*regexp.Regexp
	for _, p := range patterns {
		out = append(out, regexp.MustCompile(`^(`+p+`)$`))
	}
	return out
}

func (f *fakeCloud) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	body, _ := io.ReadAll(r.Body)
	if r.Method != "POST" || r.URL.Path != "/" || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		f.violate(w, "%s %s (%s): EC2 takes form-encoded POSTs to /", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
		return
	}
	region, ok := f.verify(w, r, body)
	if !ok {
		return
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		f.violate(w, "body does not parse: %v", err)
		return
	}
	action := form.Get("Action")
	f.requests = append(f.requests, region+" "+action)
	if form.Get("Version") != "2016-11-15" {
		f.violate(w, "%s: Version %q", action, form.Get("Version"))
		return
	}
	rules, known := allowed[action]
	if !known {
		f.violate(w, "unexpected action %s (Stagely never adds inbound rules or calls anything else)", action)
		return
	}
	for name := range form {
		if name == "Action" || name == "Version" {
			continue
		}
		if !slices.ContainsFunc(rules, func(re *regexp.Regexp) bool { return re.MatchString(name) }) {
			f.violate(w, "%s: unknown parameter %s", action, name)
			return
		}
	}
	if f.take(contract.RateLimit) {
		writeError(w, http.StatusServiceUnavailable, "RequestLimitExceeded", "Request limit exceeded.")
		return
	}
	switch action {
	case "DescribeVpcs":
		f.describeVpcs(w, region, form)
	case "DescribeSecurityGroups":
		f.describeSecurityGroups(w, region, form)
	case "CreateSecurityGroup":
		f.createSecurityGroup(w, region, form)
	case "RunInstances":
		f.runInstances(w, region, form)
	case "DescribeInstances":
		f.describeInstances(w, region, form)
	case "TerminateInstances":
		f.terminateInstances(w, region, form)
	}
}

// list collects Prefix.1, Prefix.2, … from the form.
func list(form url.Values, prefix string) []string {
	var out []string
	for i := 1; form.Has(prefix + "." + strconv.Itoa(i)); i++ {
		out = append(out, form.Get(prefix+"."+strconv.Itoa(i)))
	}
	return out
}

// filters collects Filter.N.Name and its values, rejecting names the fake
// does not know.
func (f *fakeCloud) filters(w http.ResponseWriter, form url.Values, known ...string) (map[string][]string, bool) {
	out := map[string][]string{}
	for i := 1; form.Has("Filter." + strconv.Itoa(i) + ".Name"); i++ {
		name := form.Get("Filter." + strconv.Itoa(i) + ".Name")
		if !slices.Contains(known, name) && !(slices.Contains(known, "tag:*") && strings.HasPrefix(name, "tag:")) {
			f.violate(w, "%s: unknown filter %s", form.Get("Action"), name)
			return nil, false
		}
		out[name] = list(form, "Filter."+strconv.Itoa(i)+".Value")
	}
	return out, true
}

// tagSpecs collects TagSpecification.N into resource type -> tags.
func tagSpecs(form url.Values) map[string]map[string]string {
	out := map[string]map[string]string{}
	for i := 1; form.Has("TagSpecification." + strconv.Itoa(i) + ".ResourceType"); i++ {
		p := "TagSpecification." + strconv.Itoa(i)
		tags := map[string]string{}
		for j := 1; form.Has(p + ".Tag." + strconv.Itoa(j) + ".Key"); j++ {
			tags[form.Get(p+".Tag."+strconv.Itoa(j)+".Key")] = form.Get(p + ".Tag." + strconv.Itoa(j) + ".Value")
		}
		out[form.Get(p+".ResourceType")] = tags
	}
	return out
}

func vpcOf(region string) string {
	return "vpc-" + fmt.Sprintf("%x", sha256.Sum256([]byte(region)))[:17]
}

func (f *fakeCloud) describeVpcs(w http.ResponseWriter, region string, form url.Values) {
	filters, ok := f.filters(w, form, "isDefault")
	if !ok {
		return
	}
	type vpc struct {
		ID        string `xml:"vpcId"`
		State     string `xml:"state"`
		CIDR      string `xml:"cidrBlock"`
		IsDefault bool   `xml:"isDefault"`
	}
	var vpcs []vpc
	if !f.noDefaultVPC[region] && (len(filters["isDefault"]) == 0 || slices.Contains(filters["isDefault"], "true")) {
		vpcs = append(vpcs, vpc{ID: vpcOf(region), State: "available", CIDR: "172.31.0.0/16", IsDefault: true})
	}
	writeXML(w, http.StatusOK, struct {
		XMLName xml.Name `xml:"DescribeVpcsResponse"`
		NS      string   `xml:"xmlns,attr"`
		Request string   `xml:"requestId"`
		Vpcs    []vpc    `xml:"vpcSet>item"`
	}{NS: xmlns, Request: "req-vpcs", Vpcs: vpcs})
}

type xmlTag struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

func xmlTags(tags map[string]string) []xmlTag {
	var out []xmlTag
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		out = append(out, xmlTag{k, tags[k]})
	}
	return out
}

type xmlPermission struct {
	Protocol string   `xml:"ipProtocol"`
	Ranges   []string `xml:"ipRanges>item>cidrIp"`
}

type xmlGroup struct {
	Owner       string          `xml:"ownerId"`
	ID          string          `xml:"groupId"`
	Name        string          `xml:"groupName"`
	Description string          `xml:"groupDescription"`
	VPC         string          `xml:"vpcId"`
	Ingress     []xmlPermission `xml:"ipPermissions>item"`
	Egress      []xmlPermission `xml:"ipPermissionsEgress>item"`
	Tags        []xmlTag        `xml:"tagSet>item"`
}

func (f *fakeCloud) describeSecurityGroups(w http.ResponseWriter, region string, form url.Values) {
	filters, ok := f.filters(w, form, "vpc-id", "group-name")
	if !ok {
		return
	}
	var out []xmlGroup
	for _, g := range f.groups {
		if g.region != region || (filters["vpc-id"] != nil && !slices.Contains(filters["vpc-id"], g.vpc)) ||
			(filters["group-name"] != nil && !slices.Contains(filters["group-name"], g.name)) {
			continue
		}
		x := xmlGroup{Owner: "123456789012", ID: g.id, Name: g.name, Description: g.description, VPC: g.vpc, Tags: xmlTags(g.tags),
			Egress: []xmlPermission{{Protocol: "-1", Ranges: []string{"0.0.0.0/0"}}}}
		for range g.ingress {
			x.Ingress = append(x.Ingress, xmlPermission{Protocol: "tcp", Ranges: []string{"0.0.0.0/0"}})
		}
		out = append(out, x)
	}
	writeXML(w, http.StatusOK, struct {
		XMLName xml.Name   `xml:"DescribeSecurityGroupsResponse"`
		NS      string     `xml:"xmlns,attr"`
		Request string     `xml:"requestId"`
		Groups  []xmlGroup `xml:"securityGroupInfo>item"`
	}{NS: xmlns, Request: "req-sg", Groups: out})
}

func (f *fakeCloud) createSecurityGroup(w http.ResponseWriter, region string, form url.Values) {
	name, vpc := form.Get("GroupName"), form.Get("VpcId")
	if name == "" || form.Get("GroupDescription") == "" {
		writeError(w, http.StatusBadRequest, "MissingParameter", "The request must contain the parameter GroupName and GroupDescription")
		return
	}
	// CreateSecurityGroup's GroupName, in the EC2 API Reference: "Up to
	// 255 characters in length. Cannot start with sg-."
	if len(name) > 255 || strings.HasPrefix(strings.ToLower(name), "sg-") {
		writeError(w, http.StatusBadRequest, "InvalidParameterValue", fmt.Sprintf("Value (%s) for parameter GroupName is invalid. Group names may not be in the format sg-*.", name))
		return
	}
	if vpc != vpcOf(region) {
		writeError(w, http.StatusBadRequest, "InvalidVpcID.NotFound", fmt.Sprintf("The vpc ID '%s' does not exist", vpc))
		return
	}
	for _, g := range f.groups {
		if g.region == region && g.vpc == vpc && g.name == name {
			writeError(w, http.StatusBadRequest, "InvalidGroup.Duplicate", fmt.Sprintf("The security group '%s' already exists for VPC '%s'", name, vpc))
			return
		}
	}
	f.nextID++
	g := &fakeGroup{id: fmt.Sprintf("sg-%017x", f.nextID), name: name, description: form.Get("GroupDescription"), vpc: vpc, region: region, tags: tagSpecs(form)["security-group"], notFound: f.groupNotFoundFor}
	f.groups = append(f.groups, g)
	writeXML(w, http.StatusOK, struct {
		XMLName xml.Name `xml:"CreateSecurityGroupResponse"`
		NS      string   `xml:"xmlns,attr"`
		Request string   `xml:"requestId"`
		Return  bool     `xml:"return"`
		ID      string   `xml:"groupId"`
		Tags    []xmlTag `xml:"tagSet>item"`
	}{NS: xmlns, Request: "req-csg", Return: true, ID: g.id, Tags: xmlTags(g.tags)})
}

var (
	instanceTypes = []string{"t3.medium", "t3.large", "m7i.large"}
	images        = []string{defaultImage, "ami-0123456789abcdef0"}
	instanceID    = regexp.MustCompile(`^i-[0-9a-f]{8,17}$`)
)

type xmlInstance struct {
	ID          string `xml:"instanceId"`
	Image       string `xml:"imageId"`
	State       xmlState
	Type        string   `xml:"instanceType"`
	LaunchTime  string   `xml:"launchTime"`
	AZ          string   `xml:"placement>availabilityZone"`
	ClientToken string   `xml:"clientToken"`
	Groups      []string `xml:"groupSet>item>groupId"`
	Tags        []xmlTag `xml:"tagSet>item"`
}

type xmlState struct {
	XMLName xml.Name `xml:"instanceState"`
	Code    int      `xml:"code"`
	Name    string   `xml:"name"`
}

var stateCodes = map[string]int{"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}

func (i *fakeInstance) xml() xmlInstance {
	return xmlInstance{ID: i.id, Image: i.image, State: xmlState{Code: stateCodes[i.state], Name: i.state}, Type: i.instanceType,
		LaunchTime: i.launched.Format(time.RFC3339), AZ: i.region + "a", ClientToken: i.token, Groups: i.groups, Tags: xmlTags(i.tags)}
}

type xmlReservation struct {
	ID        string        `xml:"reservationId"`
	Owner     string        `xml:"ownerId"`
	Instances []xmlInstance `xml:"instancesSet>item"`
}

func (f *fakeCloud) runInstances(w http.ResponseWriter, region string, form url.Values) {
	f.runParams = append(f.runParams, form)
	token := form.Get("ClientToken")
	if token == "" || len(token) > 64 {
		f.violate(w, "RunInstances without a ClientToken of at most 64 characters: %q", token)
		return
	}
	// The same token and parameters get the first answer; the same token
	// with other parameters is refused.
	canon := canonical(form)
	if use, ok := f.tokens[region+" "+token]; ok {
		if use.params != canon {
			writeError(w, http.StatusBadRequest, "IdempotentParameterMismatch", "Arguments on this idempotent request are inconsistent with arguments used in previous request(s).")
			return
		}
		f.writeReservation(w, "RunInstancesResponse", f.instances[use.instance])
		return
	}
	if form.Get("MinCount") != "1" || form.Get("MaxCount") != "1" {
		f.violate(w, "RunInstances for %s-%s instances", form.Get("MinCount"), form.Get("MaxCount"))
		return
	}
	userData, err := base64.StdEncoding.DecodeString(form.Get("UserData"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "InvalidParameterValue", "Invalid BASE64 encoding of user data.")
		return
	}
	if len(userData) > 16<<10 {
		writeError(w, http.StatusBadRequest, "InvalidParameterValue", "User data is limited to 16384 bytes")
		return
	}
	groups := list(form, "SecurityGroupId")
	if len(groups) == 0 {
		f.violate(w, "RunInstances without a security group: the default group lets the VPC in")
		return
	}
	for _, id := range groups {
		i := slices.IndexFunc(f.groups, func(g *fakeGroup) bool { return g.id == id && g.region == region })
		if i < 0 || f.groups[i].notFound > 0 {
			if i >= 0 {
				f.groups[i].notFound--
			}
			writeError(w, http.StatusBadRequest, "InvalidGroup.NotFound", fmt.Sprintf("The security group '%s' does not exist", id))
			return
		}
		if f.groups[i].ingress > 0 {
			f.violate(w, "RunInstances into security group %s, which has inbound rules", id)
			return
		}
	}
	tags := tagSpecs(form)
	if tags["instance"] == nil {
		f.violate(w, "RunInstances without instance tags")
		return
	}
	if !slices.Contains(instanceTypes, form.Get("InstanceType")) || f.take(contract.Invalid) {
		writeError(w, http.StatusBadRequest, "InvalidParameterValue", fmt.Sprintf("Invalid value '%s' for InstanceType.", form.Get("InstanceType")))
		return
	}
	if !slices.Contains(images, form.Get("ImageId")) {
		writeError(w, http.StatusBadRequest, "InvalidAMIID.NotFound", fmt.Sprintf("The image id '[%s]' does not exist", form.Get("ImageId")))
		return
	}
	if f.take(contract.Quota) {
		writeError(w, http.StatusBadRequest, "VcpuLimitExceeded", "You have requested more vCPU capacity than your current vCPU limit of 0 allows for the instance bucket that the specified instance type belongs to.")
		return
	}
	if f.take(contract.Capacity) {
		writeError(w, http.StatusInternalServerError, "InsufficientInstanceCapacity", fmt.Sprintf("We currently do not have sufficient %s capacity in the Availability Zone you requested (%sa).", form.Get("InstanceType"), region))
		return
	}
	f.nextID++
	i := &fakeInstance{
		id: fmt.Sprintf("i-%017x", f.nextID), region: region, instanceType: form.Get("InstanceType"), image: form.Get("ImageId"),
		userData: string(userData), token: token, state: "pending", tags: tags["instance"], groups: groups,
		launched: time.Now().UTC().Truncate(time.Second), notFound: f.describeNotFoundFor,
	}
	f.instances[i.id] = i
	f.tokens[region+" "+token] = tokenUse{params: canon, instance: i.id}
	f.writeReservation(w, "RunInstancesResponse", i)
}

// canonical is the request's parameters in a fixed order.
func canonical(form url.Values) string {
	keys := slices.Sorted(maps.Keys(form))
	var b bytes.Buffer
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%q;", k, form[k])
	}
	return b.String()
}

func (f *fakeCloud) writeReservation(w http.ResponseWriter, root string, i *fakeInstance) {
	writeXML(w, http.StatusOK, struct {
		XMLName   xml.Name      `xml:""`
		NS        string        `xml:"xmlns,attr"`
		Request   string        `xml:"requestId"`
		ID        string        `xml:"reservationId"`
		Owner     string        `xml:"ownerId"`
		Instances []xmlInstance `xml:"instancesSet>item"`
	}{XMLName: xml.Name{Local: root}, NS: xmlns, Request: "req-run", ID: "r-" + i.id[2:], Owner: "123456789012", Instances: []xmlInstance{i.xml()}})
}

func (f *fakeCloud) describeInstances(w http.ResponseWriter, region string, form url.Values) {
	filters, ok := f.filters(w, form, "tag:*", "instance-state-name")
	if !ok {
		return
	}
	ids := list(form, "InstanceId")
	if len(ids) > 0 && form.Has("MaxResults") {
		f.violate(w, "DescribeInstances with both InstanceIds and MaxResults")
		return
	}
	var picked []*fakeInstance
	for _, id := range ids {
		i := f.instances[id]
		if !instanceID.MatchString(id) {
			writeError(w, http.StatusBadRequest, "InvalidInstanceID.Malformed", fmt.Sprintf("Invalid id: \"%s\"", id))
			return
		}
		if i == nil || i.region != region || i.notFound > 0 {
			if i != nil {
				i.notFound--
			}
			writeError(w, http.StatusBadRequest, "InvalidInstanceID.NotFound", fmt.Sprintf("The instance ID '%s' does not exist", id))
			return
		}
		i.reads++
		if i.state == "pending" && f.boot >= 0 && i.reads > f.boot {
			i.state = "running"
		}
		picked = append(picked, i)
	}
	if len(ids) == 0 {
		for _, id := range slices.Sorted(maps.Keys(f.instances)) {
			i := f.instances[id]
			if i.region == region && matchInstance(i, filters) {
				picked = append(picked, i)
			}
		}
	}
	// One reservation per instance, paged by MaxResults as EC2 does.
	max, _ := strconv.Atoi(form.Get("MaxResults"))
	start, _ := strconv.Atoi(form.Get("NextToken"))
	var next string
	if max > 0 && start+max < len(picked) {
		next = strconv.Itoa(start + max)
		picked = picked[start : start+max]
	} else {
		picked = picked[min(start, len(picked)):]
	}
	var res []xmlReservation
	for _, i := range picked {
		res = append(res, xmlReservation{ID: "r-" + i.id[2:], Owner: "123456789012", Instances: []xmlInstance{i.xml()}})
	}
	writeXML(w, http.StatusOK, struct {
		XMLName      xml.Name         `xml:"DescribeInstancesResponse"`
		NS           string           `xml:"xmlns,attr"`
		Request      string           `xml:"requestId"`
		Reservations []xmlReservation `xml:"reservationSet>item"`
		NextToken    string           `xml:"nextToken,omitempty"`
	}{NS: xmlns, Request: "req-di", Reservations: res, NextToken: next})
}

func matchInstance(i *fakeInstance, filters map[string][]string) bool {
	for name, values := range filters {
		var v string
		if k, ok := strings.CutPrefix(name, "tag:"); ok {
			tv, has := i.tags[k]
			if !has {
				return false
			}
			v = tv
		} else { // instance-state-name
			v = i.state
		}
		if !slices.Contains(values, v) {
			return false
		}
	}
	return true
}

func (f *fakeCloud) terminateInstances(w http.ResponseWriter, region string, form url.Values) {
	type change struct {
		ID       string `xml:"instanceId"`
		Current  xmlState
		Previous xmlState
	}
	var changes []change
	for _, id := range list(form, "InstanceId") {
		i := f.instances[id]
		if i == nil || i.region != region {
			writeError(w, http.StatusBadRequest, "InvalidInstanceID.NotFound", fmt.Sprintf("The instance ID '%s' does not exist", id))
			return
		}
		prev := i.state
		if i.state != "terminated" {
			i.state = "shutting-down"
		}
		changes = append(changes, change{ID: id,
			Current:  xmlState{XMLName: xml.Name{Local: "currentState"}, Code: stateCodes[i.state], Name: i.state},
			Previous: xmlState{XMLName: xml.Name{Local: "previousState"}, Code: stateCodes[prev], Name: prev}})
		i.state = "terminated" // by the next read
	}
	writeXML(w, http.StatusOK, struct {
		XMLName xml.Name `xml:"TerminateInstancesResponse"`
		NS      string   `xml:"xmlns,attr"`
		Request string   `xml:"requestId"`
		Changes []change `xml:"instancesSet>item"`
	}{NS: xmlns, Request: "req-ti", Changes: changes})
}

// The contract.Cloud side.

func (f *fakeCloud) Live() []contract.FakeMachine {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []contract.FakeMachine
	for _, id := range slices.Sorted(maps.Keys(f.instances)) {
		i := f.instances[id]
		if i.state == "terminated" || i.state == "shutting-down" || i.tags["stagely"] != "stagely" {
			continue
		}
		out = append(out, contract.FakeMachine{ID: i.region + "/" + i.id, Size: i.instanceType, Region: i.region, Image: i.image, UserData: i.userData})
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
	for _, tags := range []map[string]string{{"Name": "web-1"}, {"stagely": "other", "stagely:environment": "20", "stagely:key": "env20-1"}} {
		f.nextID++
		id := fmt.Sprintf("i-%017x", f.nextID)
		f.instances[id] = &fakeInstance{id: id, region: "eu-central-1", instanceType: "t3.large", image: images[1], state: "running", tags: tags, launched: time.Now()}
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
