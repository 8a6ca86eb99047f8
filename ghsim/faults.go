package ghsim

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Kinds of injected faults.
const (
	// FaultSecondaryRateLimit answers 403 with Retry-After, as GitHub does
	// when a client creates content too fast.
	FaultSecondaryRateLimit = "secondary_rate_limit"
	// FaultRateLimit answers 403 with X-RateLimit-Remaining: 0.
	FaultRateLimit = "rate_limit"
	// FaultBadGateway answers 502, GitHub's usual transient failure.
	FaultBadGateway = "bad_gateway"
	// FaultServerError answers 500.
	FaultServerError = "server_error"
)

// Fault makes the next Times API requests matching Method and PathPrefix fail.
type Fault struct {
	Kind       string `json:"kind"`
	Method     string `json:"method,omitempty"`      // empty: any method
	PathPrefix string `json:"path_prefix,omitempty"` // e.g. /repos/o/r/check-runs; empty: any path
	Times      int    `json:"times,omitempty"`       // default 1
	RetryAfter int    `json:"retry_after,omitempty"` // seconds, default 60
}

type fault struct {
	Fault
	left int
}

// AddFault arms a fault. Faults are consumed in the order they were added.
func (s *Sim) AddFault(f Fault) error {
	switch f.Kind {
	case FaultSecondaryRateLimit, FaultRateLimit, FaultBadGateway, FaultServerError:
	default:
		return fmt.Errorf("ghsim: unknown fault kind %q", f.Kind)
	}
	if f.Times <= 0 {
		f.Times = 1
	}
	if f.RetryAfter <= 0 {
		f.RetryAfter = 60
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &fault{Fault: f, left: f.Times})
	return nil
}

// ClearFaults disarms every fault.
func (s *Sim) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// takeFault consumes the first armed fault matching c. Must hold s.mu.
func (s *Sim) takeFault(c *call) *response {
	for i, f := range s.faults {
		if f.Method != "" && !strings.EqualFold(f.Method, c.r.Method) {
			continue
		}
		if !strings.HasPrefix(c.path, f.PathPrefix) {
			continue
		}
		f.left--
		if f.left <= 0 {
			s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
		}
		return faultResponse(c, f.Fault)
	}
	return nil
}

func faultResponse(c *call, f Fault) *response {
	switch f.Kind {
	case FaultSecondaryRateLimit:
		r := jsonResponse(http.StatusForbidden, errorBody(
			"You have exceeded a secondary rate limit and have been temporarily blocked from content creation. Please retry your request again later.",
			"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"))
		r.header.Set("Retry-After", strconv.Itoa(f.RetryAfter))
		return r
	case FaultRateLimit:
		r := jsonResponse(http.StatusForbidden, errorBody(
			"API rate limit exceeded for installation.",
			"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-rate-limits"))
		r.header.Set("X-RateLimit-Limit", strconv.Itoa(rateLimitPerHour))
		r.header.Set("X-RateLimit-Remaining", "0")
		r.header.Set("X-RateLimit-Used", strconv.Itoa(rateLimitPerHour))
		r.header.Set("X-RateLimit-Reset", strconv.FormatInt(c.now.Add(time.Duration(f.RetryAfter)*time.Second).Unix(), 10))
		r.header.Set("X-RateLimit-Resource", "core")
		return r
	case FaultBadGateway:
		return jsonResponse(http.StatusBadGateway, errorBody("Server Error", defaultDocURL))
	default:
		return jsonResponse(http.StatusInternalServerError, errorBody("Server Error", defaultDocURL))
	}
}
