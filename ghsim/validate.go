package ghsim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
)

// fieldError is one entry of the "errors" array of GitHub's 422 answer.
type fieldError struct {
	Resource string `json:"resource,omitempty"`
	Field    string `json:"field,omitempty"`
	Code     string `json:"code"`
	Message  string `json:"message,omitempty"`
}

// verdict is the outcome of validating a request against the spec and the
// documented limits: status 0 means valid; otherwise the answer GitHub gives.
type verdict struct {
	status int // 0, 400 (unparsable JSON), 404 (bad path parameter) or 422
	errors []fieldError
	reason string // one line, for the request record
}

func (v verdict) ok() bool { return v.status == 0 }

// resourceOf names the resource GitHub reports in validation errors of an
// operation, from the operation's tag.
func resourceOf(sr *specRoute) string {
	for _, t := range sr.route.Operation.Tags {
		switch t {
		case "checks":
			return "CheckRun"
		case "issues":
			return "IssueComment"
		case "reactions":
			return "Reaction"
		case "apps":
			return "Installation"
		case "repos":
			return "Repository"
		case "pulls":
			return "PullRequest"
		}
	}
	return ""
}

// validateRequest checks a request against its OpenAPI operation, then
// against the limits GitHub documents but the description does not encode.
func validateRequest(ctx context.Context, sr *specRoute, r *http.Request, params map[string]string, body []byte) verdict {
	body = effectiveBody(body)
	if len(body) > 0 && !json.Valid(body) {
		return verdict{status: 400, reason: "body is not JSON"}
	}
	req := r.Clone(ctx)
	req.Body = io.NopCloser(bytes.NewReader(body))
	req.ContentLength = int64(len(body))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	// GitHub parses the body as JSON whatever the Content-Type says.
	if len(body) > 0 {
		req.Header.Set("Content-Type", "application/json")
	}
	input := &openapi3filter.RequestValidationInput{
		Request:    req,
		PathParams: params,
		Route:      sr.route,
		Options: &openapi3filter.Options{
			MultiError:          true,
			SkipSettingDefaults: true,
			AuthenticationFunc:  openapi3filter.NoopAuthenticationFunc,
		},
	}
	err := openapi3filter.ValidateRequest(ctx, input)
	if err == nil {
		if errs := checkLimits(sr, body); len(errs) > 0 {
			return verdict{status: 422, errors: errs, reason: describeErrors(errs)}
		}
		return verdict{}
	}
	res := resourceOf(sr)
	var errs []fieldError
	for _, e := range flatten(err) {
		var re *openapi3filter.RequestError
		if !errors.As(e, &re) {
			errs = append(errs, fieldError{Resource: res, Code: "invalid", Message: e.Error()})
			continue
		}
		if re.Parameter != nil && re.Parameter.In == openapi3.ParameterInPath {
			// /check-runs/abc is simply a URL that does not exist on GitHub.
			return verdict{status: 404, reason: fmt.Sprintf("path parameter %s: %v", re.Parameter.Name, re.Err)}
		}
		if re.Parameter != nil {
			errs = append(errs, fieldError{Resource: res, Field: re.Parameter.Name, Code: "invalid", Message: errText(re)})
			continue
		}
		if errors.Is(re.Err, openapi3filter.ErrInvalidRequired) {
			errs = append(errs, fieldError{Resource: res, Code: "missing", Message: "Body should be a JSON object"})
			continue
		}
		schemaErrs := schemaErrors(re.Err)
		if len(schemaErrs) == 0 {
			errs = append(errs, fieldError{Resource: res, Code: "invalid", Message: errText(re)})
		}
		for _, se := range schemaErrs {
			fe := fieldError{Resource: res, Field: strings.Join(se.JSONPointer(), "."), Code: "invalid", Message: se.Reason}
			if se.SchemaField == "required" {
				fe.Code = "missing_field"
			}
			errs = append(errs, fe)
		}
	}
	return verdict{status: 422, errors: errs, reason: describeErrors(errs)}
}

// effectiveBody treats a JSON null body as no body. GitHub does, and
// ghinstallation sends "null" when it has no token options.
func effectiveBody(body []byte) []byte {
	if t := bytes.TrimSpace(body); string(t) == "null" || len(t) == 0 {
		return nil
	}
	return body
}

func errText(re *openapi3filter.RequestError) string {
	if re.Err != nil {
		return re.Err.Error()
	}
	return re.Reason
}

// flatten splits a top-level MultiError. (errors.As would look through the
// wrappers too and lose the RequestError that says where an error is.)
func flatten(err error) []error {
	if me, ok := err.(openapi3.MultiError); ok {
		var out []error
		for _, e := range me {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

// schemaErrors collects every SchemaError inside err.
func schemaErrors(err error) []*openapi3.SchemaError {
	var out []*openapi3.SchemaError
	var walk func(error)
	walk = func(e error) {
		switch x := e.(type) {
		case nil:
		case openapi3.MultiError:
			for _, e := range x {
				walk(e)
			}
		case *openapi3.SchemaError:
			out = append(out, x)
		default:
			walk(errors.Unwrap(e))
		}
	}
	walk(err)
	return out
}

func describeErrors(errs []fieldError) string {
	parts := make([]string, 0, len(errs))
	for _, e := range errs {
		s := e.Code
		if e.Field != "" {
			s = e.Field + ": " + s
		}
		if e.Message != "" {
			s += " (" + e.Message + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// Limits GitHub documents for check runs and comments. Some are also in the
// description (where kin-openapi enforces them first); all are repeated here
// so the simulator stays strict if the description loses one.
const (
	maxCheckOutputChars = 65535
	maxCheckActions     = 3
	maxActionLabel      = 20
	maxActionIdentifier = 20
	maxActionDesc       = 40
	maxCommentBodyChars = 65536
)

func checkLimits(sr *specRoute, body []byte) []fieldError {
	switch {
	case strings.HasSuffix(sr.path, "/check-runs") && sr.method == http.MethodPost,
		strings.HasSuffix(sr.path, "/check-runs/{check_run_id}") && sr.method == http.MethodPatch:
		return checkRunLimits(body)
	case strings.HasSuffix(sr.path, "/comments") && sr.method == http.MethodPost,
		strings.HasSuffix(sr.path, "/comments/{comment_id}") && sr.method == http.MethodPatch:
		var b struct {
			Body string `json:"body"`
		}
		_ = json.Unmarshal(body, &b)
		if n := utf8.RuneCountInString(b.Body); n > maxCommentBodyChars {
			return []fieldError{{Resource: "IssueComment", Field: "body", Code: "custom",
				Message: fmt.Sprintf("body is too long (maximum is %d characters)", maxCommentBodyChars)}}
		}
	}
	return nil
}

func checkRunLimits(body []byte) []fieldError {
	var b struct {
		Output *struct {
			Title, Summary, Text *string
		} `json:"output"`
		Actions []struct {
			Label, Identifier, Description string
		} `json:"actions"`
	}
	_ = json.Unmarshal(body, &b)
	var errs []fieldError
	tooLong := func(field string, s *string, max int) {
		if s != nil && utf8.RuneCountInString(*s) > max {
			errs = append(errs, fieldError{Resource: "CheckRun", Field: field, Code: "custom",
				Message: fmt.Sprintf("%s is too long (maximum is %d characters)", field, max)})
		}
	}
	if b.Output != nil {
		tooLong("output.title", b.Output.Title, maxCheckOutputChars)
		tooLong("output.summary", b.Output.Summary, maxCheckOutputChars)
		tooLong("output.text", b.Output.Text, maxCheckOutputChars)
	}
	if len(b.Actions) > maxCheckActions {
		errs = append(errs, fieldError{Resource: "CheckRun", Field: "actions", Code: "custom",
			Message: fmt.Sprintf("no more than %d actions are allowed", maxCheckActions)})
	}
	for i, a := range b.Actions {
		p := fmt.Sprintf("actions.%d.", i)
		tooLong(p+"label", &a.Label, maxActionLabel)
		tooLong(p+"identifier", &a.Identifier, maxActionIdentifier)
		tooLong(p+"description", &a.Description, maxActionDesc)
	}
	return errs
}
