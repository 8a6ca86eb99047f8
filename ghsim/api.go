package ghsim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/getkin/kin-openapi/openapi3filter"
)

const (
	// enterprisePrefix is accepted and ignored in front of API paths, so a
	// client configured GitHub Enterprise style (base URL …/api/v3/) works.
	enterprisePrefix = "/api/v3"
	maxRequestBody   = 32 << 20
	defaultDocURL    = "https://docs.github.com/rest"
	rateLimitPerHour = 5000
)

// call is one API request on its way through the pipeline.
type call struct {
	ctx    context.Context
	r      *http.Request
	route  *specRoute
	params map[string]string
	query  url.Values
	body   []byte // the JSON body, nil when none (or "null")
	who    principal
	repo   *repo // the {owner}/{repo} of the path, once access is checked
	now    time.Time
	path   string // escaped path without enterprisePrefix
}

// decode unmarshals the (already validated) JSON body into v.
func (c *call) decode(v any) error {
	if len(c.body) == 0 {
		return nil
	}
	return json.Unmarshal(c.body, v)
}

// docURL is the documentation_url GitHub puts in error answers: the
// operation's documentation page.
func (c *call) docURL() string {
	if c.route != nil && c.route.route.Operation.ExternalDocs != nil {
		return c.route.route.Operation.ExternalDocs.URL
	}
	return defaultDocURL
}

func (c *call) intParam(name string) int64 {
	n, _ := strconv.ParseInt(c.params[name], 10, 64)
	return n
}

// response is what a handler answers; the pipeline encodes it.
type response struct {
	status int
	body   any // encoded as JSON; nil for no body
	header http.Header
}

func jsonResponse(status int, body any) *response {
	return &response{status: status, body: body, header: http.Header{}}
}

func errorBody(message, doc string) map[string]any {
	return map[string]any{"message": message, "documentation_url": doc}
}

func notFound(c *call) *response {
	return jsonResponse(http.StatusNotFound, errorBody("Not Found", c.docURL()))
}

func validationFailed(c *call, errs ...fieldError) *response {
	return jsonResponse(http.StatusUnprocessableEntity, map[string]any{
		"message":           "Validation Failed",
		"errors":            errs,
		"documentation_url": c.docURL(),
	})
}

// unprocessable is GitHub's other 422 shape: a message and no errors array.
func unprocessable(c *call, message string) *response {
	return jsonResponse(http.StatusUnprocessableEntity, errorBody(message, c.docURL()))
}

// rateBucket counts requests of one installation (or the App) in the
// current hour, like GitHub's primary rate limit.
type rateBucket struct {
	used  int
	reset time.Time
}

func (s *Sim) serveAPI(w http.ResponseWriter, r *http.Request) {
	raw, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody))
	if err != nil {
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	path := strings.TrimPrefix(r.URL.EscapedPath(), enterprisePrefix)
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}

	s.mu.Lock()
	c := &call{ctx: r.Context(), r: r, path: path, query: r.URL.Query(), body: effectiveBody(raw), now: s.now()}
	rec := Request{Time: c.now, Method: r.Method, Path: path, Query: c.query, Body: recordBody(raw)}
	resp := s.handleAPI(c, raw, &rec)
	status, header, body := s.finish(c, resp, &rec)
	s.record(rec)
	s.mu.Unlock()

	for k, v := range header {
		w.Header()[k] = v
	}
	w.WriteHeader(status)
	if len(body) > 0 && r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// handleAPI runs a request through GitHub's order of checks: route, faults,
// credentials, rate limit, repository visibility, validation, then the
// operation itself. Must be called with s.mu held.
func (s *Sim) handleAPI(c *call, raw []byte, rec *Request) *response {
	sr, params, ok := s.spec.match(c.r.Method, c.path)
	if !ok {
		rec.Error = "no such operation in the simulator"
		return jsonResponse(http.StatusNotFound, errorBody("Not Found", defaultDocURL))
	}
	c.route, c.params = sr, params
	rec.Operation = sr.route.Operation.OperationID

	// Validate first, for the record; the answer comes after the checks
	// GitHub makes before it looks at the request's content.
	v := validateRequest(c.ctx, sr, c.r, params, raw)
	rec.Valid = v.ok()
	if !v.ok() {
		rec.Error = v.reason
	}

	if f := s.takeFault(c); f != nil {
		return f
	}
	who, aerr := s.authenticate(c.r, sr.auth, c.now)
	if aerr != nil {
		if rec.Error == "" {
			rec.Error = aerr.reason
		}
		if aerr.status == http.StatusForbidden {
			return jsonResponse(aerr.status, errorBody("Resource not accessible by integration", c.docURL()))
		}
		return jsonResponse(aerr.status, errorBody("Bad credentials", defaultDocURL))
	}
	c.who = who
	if resp := s.checkRateLimit(c); resp != nil {
		return resp
	}
	if owner, name := params["owner"], params["repo"]; owner != "" && name != "" {
		r := s.st.repos[strings.ToLower(owner+"/"+name)]
		if r == nil || !who.reaches(r) {
			return notFound(c)
		}
		c.repo = r
	}
	switch v.status {
	case 0:
	case http.StatusBadRequest:
		return jsonResponse(http.StatusBadRequest, errorBody("Problems parsing JSON", c.docURL()))
	case http.StatusNotFound:
		return notFound(c)
	default:
		return validationFailed(c, v.errors...)
	}
	return sr.handle(s, c)
}

// finish encodes the response and adds GitHub's headers: rate limit,
// caching (ETag, 304 on If-None-Match), media type. Must hold s.mu.
func (s *Sim) finish(c *call, resp *response, rec *Request) (int, http.Header, []byte) {
	h := resp.header
	if h == nil {
		h = http.Header{}
	}
	var body []byte
	if resp.body != nil {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false) // GitHub does not escape <, > and & either
		if err := enc.Encode(resp.body); err != nil {
			resp = jsonResponse(http.StatusInternalServerError, errorBody("ghsim: encoding response: "+err.Error(), defaultDocURL))
			buf.Reset()
			_ = json.NewEncoder(&buf).Encode(resp.body)
		}
		body = bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
		h.Set("Content-Type", "application/json; charset=utf-8")
	}
	status := resp.status
	h.Set("Date", c.now.Format(http.TimeFormat))
	h.Set("X-GitHub-Media-Type", "github.v3; format=json")
	h.Set("X-GitHub-Api-Version-Selected", "2022-11-28")
	h.Set("X-GitHub-Request-Id", fmt.Sprintf("GHSIM:%X", c.now.UnixNano()+int64(len(s.records))))

	if c.r.Method == http.MethodGet && status == http.StatusOK && body != nil {
		sum := sha256.Sum256(body)
		etag := `W/"` + hex.EncodeToString(sum[:20]) + `"`
		h.Set("ETag", etag)
		// GitHub's caching headers, including max-age: a caching client
		// (gregjones/httpcache in go-githubapp) that does not revalidate will
		// serve stale data for a minute, against GitHub as against us.
		h.Set("Cache-Control", "private, max-age=60, s-maxage=60")
		h.Set("Vary", "Accept, Authorization, Cookie, X-GitHub-OTP")
		if etagMatches(c.r.Header.Get("If-None-Match"), etag) {
			status, body = http.StatusNotModified, nil
			h.Del("Content-Type")
		}
	}
	s.countRate(c, status, h)

	if s.cfg.CheckResponses && c.route != nil && status != http.StatusNotModified {
		rec.ResponseError = s.checkResponse(c, status, h, body)
	}
	rec.Status = status
	return status, h, body
}

// etagMatches implements If-None-Match with weak comparison (RFC 9110).
func etagMatches(ifNoneMatch, etag string) bool {
	if ifNoneMatch == "" {
		return false
	}
	want := strings.TrimPrefix(etag, "W/")
	for _, t := range strings.Split(ifNoneMatch, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == want {
			return true
		}
	}
	return false
}

func (c *call) rateKey() string {
	switch {
	case c.who.app:
		return "app"
	case c.who.tok != nil:
		return "installation:" + strconv.FormatInt(c.who.tok.inst.id, 10)
	}
	return ""
}

func (s *Sim) bucket(key string, now time.Time) *rateBucket {
	if s.rate == nil {
		s.rate = map[string]*rateBucket{}
	}
	b := s.rate[key]
	if b == nil || !now.Before(b.reset) {
		b = &rateBucket{reset: now.Add(time.Hour)}
		s.rate[key] = b
	}
	return b
}

// checkRateLimit refuses a request once the hour's budget is spent.
func (s *Sim) checkRateLimit(c *call) *response {
	key := c.rateKey()
	if key == "" {
		return nil
	}
	if b := s.bucket(key, c.now); b.used >= rateLimitPerHour {
		return jsonResponse(http.StatusForbidden, errorBody(
			"API rate limit exceeded for "+strings.ReplaceAll(key, ":", " ID ")+".",
			"https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"))
	}
	return nil
}

// countRate charges a request to its bucket and sets the X-RateLimit
// headers. 304 answers are free, as on GitHub.
func (s *Sim) countRate(c *call, status int, h http.Header) {
	key := c.rateKey()
	if key == "" {
		return
	}
	b := s.bucket(key, c.now)
	if status != http.StatusNotModified && b.used < rateLimitPerHour {
		b.used++
	}
	h.Set("X-RateLimit-Limit", strconv.Itoa(rateLimitPerHour))
	h.Set("X-RateLimit-Remaining", strconv.Itoa(rateLimitPerHour-b.used))
	h.Set("X-RateLimit-Used", strconv.Itoa(b.used))
	h.Set("X-RateLimit-Reset", strconv.FormatInt(b.reset.Unix(), 10))
	h.Set("X-RateLimit-Resource", "core")
}

// checkResponse validates an answer against the operation's responses.
func (s *Sim) checkResponse(c *call, status int, h http.Header, body []byte) string {
	req := c.r.Clone(c.ctx)
	req.Body = io.NopCloser(bytes.NewReader(c.body))
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{
			Request: req, PathParams: c.params, Route: c.route.route,
		},
		Status:  status,
		Header:  h,
		Options: &openapi3filter.Options{MultiError: true},
	}
	in.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(c.ctx, in); err != nil {
		return conciseError(err)
	}
	return ""
}

// conciseError lists the schema violations in err as "path: reason", without
// the schema dumps kin-openapi's messages carry.
func conciseError(err error) string {
	ses := schemaErrors(err)
	if len(ses) == 0 {
		return err.Error()
	}
	parts := make([]string, 0, len(ses))
	for _, se := range ses {
		parts = append(parts, "/"+strings.Join(se.JSONPointer(), "/")+": "+se.Reason)
	}
	return strings.Join(parts, "; ")
}

// paginate applies GitHub's page/per_page (default 30, at most 100) to n
// items, returning the slice bounds and setting the Link header.
func (s *Sim) paginate(c *call, n int, h http.Header) (lo, hi int) {
	perPage, _ := strconv.Atoi(c.query.Get("per_page"))
	if perPage <= 0 {
		perPage = 30
	}
	perPage = min(perPage, 100)
	page, _ := strconv.Atoi(c.query.Get("page"))
	page = max(page, 1)
	last := max((n+perPage-1)/perPage, 1)
	lo = min((page-1)*perPage, n)
	hi = min(lo+perPage, n)

	link := func(p int, rel string) string {
		q := url.Values{}
		for k, v := range c.query {
			q[k] = v
		}
		q.Set("page", strconv.Itoa(p))
		q.Set("per_page", strconv.Itoa(perPage))
		return fmt.Sprintf(`<%s%s?%s>; rel="%s"`, s.baseURL, c.path, q.Encode(), rel)
	}
	var links []string
	if page > 1 {
		links = append(links, link(min(page-1, last), "prev"))
	}
	if page < last {
		links = append(links, link(page+1, "next"), link(last, "last"))
	}
	if page > 1 {
		links = append(links, link(1, "first"))
	}
	if len(links) > 0 {
		h.Set("Link", strings.Join(links, ", "))
	}
	return lo, hi
}
