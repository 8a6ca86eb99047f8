package hetzner

import (
	"net/http"
	"strings"
	"testing"
)

// The fake is only worth its tests if it refuses what Hetzner would, and
// what Stagely must never send.
func TestFakeRefusesWrongRequests(t *testing.T) {
	f := newFakeCloud(t)
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
			req, _ := http.NewRequestWithContext(t.Context(), tt.method, f.srv.URL+tt.path, strings.NewReader(tt.body))
			req.Header.Set("Content-Type", "application/json")
			if tt.auth {
				req.Header.Set("Authorization", "Bearer "+f.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			f.mu.Lock()
			got := strings.Join(f.violations, "\n")
			f.violations = nil
			f.mu.Unlock()
			if resp.StatusCode < 400 || !strings.Contains(got, tt.violation) {
				t.Errorf("status %s, violations %q; want one about %q", resp.Status, got, tt.violation)
			}
		})
	}
}
