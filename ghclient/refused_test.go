package ghclient

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"github.com/bradleyfalzon/ghinstallation/v2"
	"github.com/google/go-github/v60/github"
)

func TestRefusedTellsRefusalsFromPassingFaults(t *testing.T) {
	resp := func(code int) *http.Response {
		return &http.Response{StatusCode: code, Request: &http.Request{Method: "GET", URL: &url.URL{}}}
	}
	apiErr := func(code int) error { return fmt.Errorf("react eyes: %w", &github.ErrorResponse{Response: resp(code)}) }
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"token refused", apiErr(http.StatusUnauthorized), true},
		{"not accessible by integration", apiErr(http.StatusForbidden), true},
		{"deleted comment", apiErr(http.StatusNotFound), true},
		{"gone", apiErr(http.StatusGone), true},
		{"no token for a removed installation", &url.Error{Op: "Post", URL: "x", Err: &ghinstallation.HTTPError{Message: "could not refresh", Response: resp(http.StatusNotFound)}}, true},
		{"server fault", apiErr(http.StatusBadGateway), false},
		{"validation", apiErr(http.StatusUnprocessableEntity), false},
		{"rate limit", &github.RateLimitError{Response: resp(http.StatusForbidden)}, false},
		{"secondary rate limit", &github.AbuseRateLimitError{Response: resp(http.StatusForbidden)}, false},
		{"token endpoint down", &ghinstallation.HTTPError{Message: "could not refresh", Response: resp(http.StatusServiceUnavailable)}, false},
		{"network", errors.New("dial tcp: connection refused"), false},
		{"nil", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Refused(tt.err); got != tt.want {
				t.Errorf("Refused(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
