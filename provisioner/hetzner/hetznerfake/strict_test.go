package hetznerfake

import (
	"net/http"
	"strings"
	"testing"
)

// The fake is only worth its tests if it refuses what Hetzner would, and
// what Stagely must never send.
func TestFakeRefusesWrongRequests(t *testing.T) {
	c := New(t)
	tests := []struct {
		name, method, path, body string
		auth                     bool
		violation                string
	}{
		{"no bearer token", "GET", "/servers", "", false, "without a bearer token"},
		{"unknown body field", "POST", "/servers", `{"name":"x","server_type":"cx22","image":"ubuntu-24.04","location":"fsn1","firewalls":[],"colour":"red"}`, true, `unknown field "colour"`},
		{"unknown query parameter", "GET", "/servers?labels=x", "", true, `unknown query parameter "labels"`},
		{"server without a firewall", "POST", "/servers", `{"name":"x","server_type":"cx22","image":"ubuntu-24.04","location":"fsn1"}`, true, "without a firewall"},
		{"unknown endpoint", "POST", "/firewalls/1/actions/set_rules", `{"rules":[]}`, true, "unexpected request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), tt.method, c.URL()+tt.path, strings.NewReader(tt.body))
			req.Header.Set("Content-Type", "application/json")
			if tt.auth {
				req.Header.Set("Authorization", "Bearer "+c.Token())
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			// Taken, so that the violations the test provokes do not fail
			// it when the fake stops.
			c.mu.Lock()
			got := strings.Join(c.violations, "\n")
			c.violations = nil
			c.mu.Unlock()
			if resp.StatusCode < 400 || !strings.Contains(got, tt.violation) {
				t.Errorf("status %s, violations %q; want one about %q", resp.Status, got, tt.violation)
			}
		})
	}
}

func TestNamesAndLabelsAreCheckedAsHetznerDoes(t *testing.T) {
	for _, tt := range []struct {
		s           string
		name, label bool
	}{
		{"", false, true},
		{"a", true, true},
		{"env5-2", true, true},
		{"-a", false, false},
		{"a-", false, false},
		{"A", false, true},
		{"octo_app", false, true},
		{"a.b", false, true},
		{"_a", false, false},
		{strings.Repeat("a", 63), true, true},
		{strings.Repeat("a", 64), false, false},
		{"é", false, false},
	} {
		if got := validHostname(tt.s); got != tt.name {
			t.Errorf("validHostname(%q) = %v, want %v", tt.s, got, tt.name)
		}
		if got := validLabel(tt.s); got != tt.label {
			t.Errorf("validLabel(%q) = %v, want %v", tt.s, got, tt.label)
		}
	}
}
