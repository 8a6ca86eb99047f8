package provisioner

import "errors"

// The kinds of failure a person can act on. Provider errors wrap one of
// them when the cloud's answer fits (test with errors.Is), usually inside an
// *Error that also carries the cloud's own code and message.
var (
	// ErrRateLimited: the cloud kept refusing requests for being too many,
	// after the provider retried with backoff. Passing: try again later.
	ErrRateLimited = errors.New("the cloud is rate limiting Stagely's requests")
	// ErrQuotaExceeded: the account may not have more machines (or vCPUs,
	// or servers) than it has. Someone has to raise the limit or free some.
	ErrQuotaExceeded = errors.New("the cloud account's quota for machines is used up")
	// ErrNoCapacity: the cloud has no room for this size in this region just
	// now. Passing: try again later, or elsewhere.
	ErrNoCapacity = errors.New("the cloud has no capacity for this machine size in this region right now")
	// ErrBadCredentials: the cloud rejected the credentials, or they may not
	// do what Stagely asked.
	ErrBadCredentials = errors.New("the cloud rejected Stagely's credentials")
	// ErrInvalidSpec: the size, region, image or user data cannot make a
	// machine, whatever happens next.
	ErrInvalidSpec = errors.New("the cloud cannot make a machine from this spec (size, region, image or user data)")
	// ErrNotReady: the machine did not run within the time allowed. Launch
	// destroys such a machine before it returns this.
	ErrNotReady = errors.New("the machine did not become ready in time")
	// ErrKeySpent: the idempotency key names a machine that is gone (EC2
	// keeps a ClientToken's answer after the instance is terminated). No
	// retry with that key makes a machine: the caller moves to a new
	// attempt, with a new key.
	ErrKeySpent = errors.New("the machine this idempotency key names is gone")
	// ErrUnavailable: the cloud's API failed on its side (a 5xx, an
	// outage, maintenance). Passing: try again shortly.
	ErrUnavailable = errors.New("the cloud's API is unavailable just now")
)

// Error is a cloud API call that failed, with the cloud's own words.
type Error struct {
	// Kind is one of the Err values above, or nil when the failure fits
	// none of them.
	Kind error
	// Code and Message are the cloud's ("InstanceLimitExceeded", "You have
	// requested more instances than your current instance limit allows").
	Code, Message string
	// Err is the SDK's error.
	Err error
}

func (e *Error) Error() string {
	var detail string
	switch {
	case e.Code != "" && e.Message != "":
		detail = e.Code + ": " + e.Message
	case e.Code != "" || e.Message != "":
		detail = e.Code + e.Message
	case e.Err != nil:
		detail = e.Err.Error()
	}
	switch {
	case e.Kind == nil:
		return detail
	case detail == "":
		return e.Kind.Error()
	default:
		return e.Kind.Error() + " (" + detail + ")"
	}
}

// Unwrap lets errors.Is find both the kind and the SDK's error.
func (e *Error) Unwrap() []error {
	var errs []error
	for _, err := range []error{e.Kind, e.Err} {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// Retryable reports whether err is a passing fault that may clear by itself:
// a rate limit, a lack of capacity, or a machine that was slow to start.
func Retryable(err error) bool {
	return errors.Is(err, ErrRateLimited) || errors.Is(err, ErrNoCapacity) || errors.Is(err, ErrNotReady) || errors.Is(err, ErrUnavailable)
}

// Hint says what a person can do about err, for the Check Run. It is empty
// when err is of no known kind.
func Hint(err error) string {
	switch {
	case errors.Is(err, ErrRateLimited):
		return "the cloud is busy with Stagely's requests; Stagely will try again shortly"
	case errors.Is(err, ErrQuotaExceeded):
		return "destroy previews you no longer need, or ask the Stagely operator to raise the cloud account's limit"
	case errors.Is(err, ErrNoCapacity):
		return "try again later, or choose another provider.size or provider.region in .stagely.yml"
	case errors.Is(err, ErrBadCredentials):
		return "ask the Stagely operator to check the cloud credentials and their permissions"
	case errors.Is(err, ErrInvalidSpec):
		return "check provider.size, provider.region and provider.image in .stagely.yml"
	case errors.Is(err, ErrNotReady):
		return "the machine was destroyed; redeploy to try again"
	case errors.Is(err, ErrUnavailable):
		return "the cloud's API failed on its side; Stagely will try again shortly"
	}
	return ""
}
