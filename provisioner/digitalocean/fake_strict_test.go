package digitalocean

import (
	"net/http"
	"strings"
	"testing"
)

// The fake is only worth its tests if it refuses what DigitalOcean would,
// and what Stagely must never send.
func TestFakeRefusesWrongRequests(t *testing.T) {
	f := newFakeCloud(t)
	tests := []struct {
		name, method, path, body string
		auth                     bool
		violation                string
	}{
		{"no bearer token", "GET", "/v2/droplets", "", false, "without a bearer token"},
		{"unknown body field", "POST", "/v2/droplets", `{"name":"x","region":"fra1","size":"s-2vcpu-4gb","image":"ubuntu-24-04-x64","colour":"red"}`, true, `unknown field "colour"`},
		{"unknown query parameter", "GET", "/v2/droplets?label=x", "", true, `unknown query parameter "label"`},
		{"firewall with an inbound rule", "POST", "/v2/firewalls", `{"name":"x","inbound_rules":[{"protocol":"tcp","ports":"22","sources":{"addresses":["0.0.0.0/0"]}}],"outbound_rules":[],"tags":["stagely"]}`, true, "inbound rules"},
		{"unknown endpoint", "POST", "/v2/firewalls/fw-1/rules", `{}`, true, "unexpected request"},
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
