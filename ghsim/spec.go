package ghsim

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/routers"
)

// restSpec is the embedded subset of GitHub's REST description, with each
// served route bound to its OpenAPI operation.
type restSpec struct {
	doc    *openapi3.T
	routes []specRoute
}

type specRoute struct {
	apiRoute
	segments []string // template split on "/", without the leading empty one
	route    *routers.Route
	multi    map[string]bool // path params that may span several segments
}

func loadRESTSpec() (*restSpec, error) {
	data, err := readGitHubData(restSubsetFile)
	if err != nil {
		return nil, err
	}
	loader := openapi3.NewLoader()
	loader.Context = context.Background()
	doc, err := loader.LoadFromData(data)
	if err != nil {
		return nil, fmt.Errorf("ghsim: load REST spec subset: %w", err)
	}
	rs := &restSpec{doc: doc}
	for _, r := range apiRoutes() {
		item := doc.Paths.Value(r.path)
		if item == nil {
			return nil, fmt.Errorf("ghsim: spec subset lacks %s (re-extract it)", r.path)
		}
		op := item.GetOperation(r.method)
		if op == nil {
			return nil, fmt.Errorf("ghsim: spec subset lacks %s %s (re-extract it)", r.method, r.path)
		}
		sr := specRoute{
			apiRoute: r,
			segments: strings.Split(strings.TrimPrefix(r.path, "/"), "/"),
			route:    &routers.Route{Spec: doc, Path: r.path, PathItem: item, Method: r.method, Operation: op},
			multi:    map[string]bool{},
		}
		for _, p := range op.Parameters {
			if p.Value != nil && p.Value.In == openapi3.ParameterInPath {
				if v, ok := p.Value.Extensions["x-multi-segment"].(bool); ok && v {
					sr.multi[p.Value.Name] = true
				}
			}
		}
		// GitHub serves paths whose last parameter is a file path or ref with
		// slashes in it even where the description does not say so.
		if last := sr.segments[len(sr.segments)-1]; last == "{path}" || last == "{ref}" {
			sr.multi[strings.Trim(last, "{}")] = true
		}
		if strings.Contains(r.path, "/commits/{ref}/") {
			sr.multi["ref"] = true
		}
		rs.routes = append(rs.routes, sr)
	}
	return rs, nil
}

// match finds the route for method and an escaped URL path. Among several
// matching templates the one with the most literal segments wins, so
// /issues/comments/1 is a comment, not issue "comments". It returns the
// unescaped path parameters; ok is false when no template matches path and
// method (GitHub answers 404 to both cases).
func (rs *restSpec) match(method, escapedPath string) (*specRoute, map[string]string, bool) {
	raw := strings.Split(strings.TrimPrefix(escapedPath, "/"), "/")
	segs := make([]string, len(raw))
	for i, s := range raw {
		u, err := url.PathUnescape(s)
		if err != nil {
			return nil, nil, false
		}
		segs[i] = u
	}
	var best *specRoute
	var bestParams map[string]string
	bestLiterals := -1
	for i := range rs.routes {
		sr := &rs.routes[i]
		if sr.method != method {
			continue
		}
		params := map[string]string{}
		if !matchSegments(sr.segments, segs, sr.multi, params) {
			continue
		}
		lit := 0
		for _, t := range sr.segments {
			if !strings.HasPrefix(t, "{") {
				lit++
			}
		}
		if lit > bestLiterals {
			best, bestParams, bestLiterals = sr, params, lit
		}
	}
	return best, bestParams, best != nil
}

func matchSegments(tmpl, segs []string, multi map[string]bool, params map[string]string) bool {
	if len(tmpl) == 0 {
		return len(segs) == 0
	}
	t := tmpl[0]
	if !strings.HasPrefix(t, "{") {
		return len(segs) > 0 && segs[0] == t && matchSegments(tmpl[1:], segs[1:], multi, params)
	}
	name := strings.Trim(t, "{}")
	maxTake := 1
	if multi[name] {
		maxTake = len(segs) - (len(tmpl) - 1)
	}
	// Longest first: a ref like "feature/x" should not stop at "feature".
	for take := maxTake; take >= 1; take-- {
		if take > len(segs) {
			continue
		}
		val := strings.Join(segs[:take], "/")
		if val == "" {
			continue
		}
		if matchSegments(tmpl[1:], segs[take:], multi, params) {
			params[name] = val
			return true
		}
	}
	return false
}
