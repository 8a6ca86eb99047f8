package ghclient

import (
	"errors"
	"net/http"

	"github.com/bradleyfalzon/ghinstallation/v2"
	"github.com/google/go-github/v60/github"
)

// Refused reports whether err is GitHub saying, for good, that the app
// may not do what it asked: the installation was removed (its token is
// refused, or no new one is granted), the repository was taken out of it,
// or what the call names is gone (a deleted comment). Retrying such a
// call mends nothing; rate limits and server faults are not refusals.
func Refused(err error) bool {
	var rl *github.RateLimitError
	var abuse *github.AbuseRateLimitError
	if errors.As(err, &rl) || errors.As(err, &abuse) {
		return false
	}
	var re *github.ErrorResponse
	if errors.As(err, &re) && re.Response != nil {
		return refusedStatus(re.Response.StatusCode)
	}
	var he *ghinstallation.HTTPError
	if errors.As(err, &he) && he.Response != nil {
		return refusedStatus(he.Response.StatusCode)
	}
	return false
}

func refusedStatus(code int) bool {
	switch code {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound, http.StatusGone:
		return true
	}
	return false
}
