package ghsim

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

var updateSubset = flag.Bool("update", false, "rewrite the embedded GitHub spec subsets in githubdata/ from ../shared")

// sharedGitHubDir is the read-only reference data beside the repository.
const sharedGitHubDir = "../../shared/testdata/github"

// TestSpecSubsetIsCurrent re-extracts the embedded subsets from GitHub's full
// descriptions and fails unless they are identical, so a change to the routes,
// the webhook kinds or the reference data cannot silently leave the simulator
// validating against something else. Run `go test ./ghsim -run
// TestSpecSubsetIsCurrent -update` to rewrite them.
//
// The .gz files are compared after decompression: gzip output may differ
// between Go releases even for identical input, the JSON inside may not.
func TestSpecSubsetIsCurrent(t *testing.T) {
	if _, err := os.Stat(sharedGitHubDir); err != nil {
		t.Fatalf("reference data missing (%v): the subset check needs the shared GitHub descriptions", err)
	}
	want := map[string][]byte{} // file under githubdata -> uncompressed content

	rest, err := os.ReadFile(filepath.Join(sharedGitHubDir, "rest-api.json"))
	if err != nil {
		t.Fatal(err)
	}
	restSub, err := extractRESTSubset(rest, apiRoutes())
	if err != nil {
		t.Fatal(err)
	}
	want[restSubsetFile] = restSub

	hooks, err := os.ReadFile(filepath.Join(sharedGitHubDir, "webhooks-api.json"))
	if err != nil {
		t.Fatal(err)
	}
	hookSub, err := extractWebhookSubset(hooks, webhookKinds())
	if err != nil {
		t.Fatal(err)
	}
	want[webhookSubsetFile] = hookSub

	for _, k := range webhookKinds() {
		b, err := os.ReadFile(filepath.Join(sharedGitHubDir, "webhooks", k.template))
		if err != nil {
			t.Fatal(err)
		}
		want["webhooks/"+k.template] = b
	}
	lic, err := os.ReadFile(filepath.Join(sharedGitHubDir, "LICENSE"))
	if err != nil {
		t.Fatal(err)
	}
	want["LICENSE"] = lic

	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	sort.Strings(names)

	if *updateSubset {
		if err := os.RemoveAll(filepath.Join("githubdata", "webhooks")); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			data := want[n]
			if strings.HasSuffix(n, ".gz") {
				data = gzipBytes(t, data)
			}
			p := filepath.Join("githubdata", filepath.FromSlash(n))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return
	}

	for _, n := range names {
		got, err := githubData.ReadFile("githubdata/" + n)
		if err != nil {
			t.Errorf("%s: not embedded (run with -update): %v", n, err)
			continue
		}
		if strings.HasSuffix(n, ".gz") {
			if got, err = gunzip(got); err != nil {
				t.Errorf("%s: %v", n, err)
				continue
			}
		}
		if !bytes.Equal(got, want[n]) {
			t.Errorf("%s is stale: re-extract with `go test ./ghsim -run TestSpecSubsetIsCurrent -update`", n)
		}
	}
	// Templates no longer used must not linger in the embedded data.
	entries, err := githubData.ReadDir("githubdata/webhooks")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if _, ok := want["webhooks/"+e.Name()]; !ok {
			t.Errorf("githubdata/webhooks/%s is not used by any webhook kind (run with -update)", e.Name())
		}
	}
}

func gzipBytes(t *testing.T, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// extractRESTSubset keeps the listed operations of rest-api.json and every
// component they reference, transitively. Examples are dropped: they are
// documentation, never used for validation, and make up much of the size.
func extractRESTSubset(full []byte, routes []apiRoute) ([]byte, error) {
	doc, err := decodeOrdered(full)
	if err != nil {
		return nil, fmt.Errorf("rest-api.json: %w", err)
	}
	paths, _ := doc["paths"].(map[string]any)
	outPaths := map[string]any{}
	for _, r := range routes {
		item, ok := paths[r.path].(map[string]any)
		if !ok {
			return nil, fmt.Errorf("rest-api.json has no path %s", r.path)
		}
		op, ok := item[strings.ToLower(r.method)]
		if !ok {
			return nil, fmt.Errorf("rest-api.json has no %s %s", r.method, r.path)
		}
		dst, _ := outPaths[r.path].(map[string]any)
		if dst == nil {
			dst = map[string]any{}
			if ps, ok := item["parameters"]; ok {
				dst["parameters"] = ps
			}
			outPaths[r.path] = dst
		}
		dst[strings.ToLower(r.method)] = op
	}
	out := map[string]any{
		"openapi":      doc["openapi"],
		"info":         doc["info"],
		"servers":      doc["servers"],
		"externalDocs": doc["externalDocs"],
		"paths":        stripExamples(outPaths),
	}
	comps, err := closeOverRefs(doc, out["paths"])
	if err != nil {
		return nil, err
	}
	out["components"] = comps
	return encodeCanonical(out)
}

// extractWebhookSubset keeps the listed webhooks of webhooks-api.json and the
// component schemas they reference, transitively.
func extractWebhookSubset(full []byte, kinds []webhookKind) ([]byte, error) {
	doc, err := decodeOrdered(full)
	if err != nil {
		return nil, fmt.Errorf("webhooks-api.json: %w", err)
	}
	hooks, _ := doc["webhooks"].(map[string]any)
	outHooks := map[string]any{}
	for _, k := range kinds {
		h, ok := hooks[k.schema]
		if !ok {
			return nil, fmt.Errorf("webhooks-api.json has no webhook %s", k.schema)
		}
		outHooks[k.schema] = h
	}
	out := map[string]any{
		"openapi":  doc["openapi"],
		"info":     doc["info"],
		"webhooks": stripExamples(outHooks),
	}
	comps, err := closeOverRefs(doc, out["webhooks"])
	if err != nil {
		return nil, err
	}
	out["components"] = comps
	return encodeCanonical(out)
}

// closeOverRefs collects every "#/components/<kind>/<name>" reachable from
// root within doc and returns them as a components object.
func closeOverRefs(doc map[string]any, root any) (map[string]any, error) {
	comps, _ := doc["components"].(map[string]any)
	out := map[string]any{}
	seen := map[string]bool{}
	queue := collectRefs(root, nil)
	for len(queue) > 0 {
		ref := queue[0]
		queue = queue[1:]
		if seen[ref] {
			continue
		}
		seen[ref] = true
		parts := strings.Split(strings.TrimPrefix(ref, "#/components/"), "/")
		if !strings.HasPrefix(ref, "#/components/") || len(parts) != 2 {
			return nil, fmt.Errorf("unsupported $ref %q", ref)
		}
		kind, name := parts[0], unescapePointer(parts[1])
		group, _ := comps[kind].(map[string]any)
		v, ok := group[name]
		if !ok {
			return nil, fmt.Errorf("dangling $ref %q", ref)
		}
		v = stripExamples(v)
		dst, _ := out[kind].(map[string]any)
		if dst == nil {
			dst = map[string]any{}
			out[kind] = dst
		}
		dst[name] = v
		queue = collectRefs(v, queue)
	}
	return out, nil
}

func unescapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~1", "/"), "~0", "~")
}

func collectRefs(v any, acc []string) []string {
	switch x := v.(type) {
	case map[string]any:
		if r, ok := x["$ref"].(string); ok {
			acc = append(acc, r)
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			acc = collectRefs(x[k], acc)
		}
	case []any:
		for _, e := range x {
			acc = collectRefs(e, acc)
		}
	}
	return acc
}

// stripExamples removes "example"/"examples" keywords (but not properties that
// happen to carry those names) from a copy of v.
func stripExamples(v any) any {
	return stripExamplesIn(v, false)
}

func stripExamplesIn(v any, isPropertiesMap bool) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			if !isPropertiesMap && (k == "example" || k == "examples") {
				continue
			}
			out[k] = stripExamplesIn(e, !isPropertiesMap && k == "properties")
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = stripExamplesIn(e, false)
		}
		return out
	}
	return v
}

// decodeOrdered decodes JSON keeping numbers verbatim.
func decodeOrdered(b []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	return m, nil
}

// encodeCanonical writes v with sorted keys and no HTML escaping, so the same
// input always gives the same bytes.
func encodeCanonical(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
