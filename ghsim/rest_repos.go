package ghsim

import (
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"
)

// GET /repos/{owner}/{repo}
func (s *Sim) getRepo(c *call) *response {
	return jsonResponse(http.StatusOK, s.repoJSON(c.repo))
}

// GET /repos/{owner}/{repo}/pulls/{pull_number}
func (s *Sim) getPull(c *call) *response {
	p := c.repo.pulls[int(c.intParam("pull_number"))]
	if p == nil {
		return notFound(c)
	}
	return jsonResponse(http.StatusOK, s.pullJSON(c.repo, p))
}

// GET /repos/{owner}/{repo}/contents/{path}?ref=
//
// A file answers its base64 content, a directory its listing, anything else
// 404 Not Found, as GitHub.
func (s *Sim) getContents(c *call) *response {
	ref := c.query.Get("ref")
	if ref == "" {
		ref = c.repo.defaultBranch
	}
	cm := c.repo.resolveRef(ref)
	if cm == nil {
		return jsonResponse(http.StatusNotFound, errorBody("No commit found for the ref "+ref, c.docURL()))
	}
	p := cleanPath(c.params["path"])
	if content, ok := cm.tree[p]; ok {
		e := s.contentEntryJSON(c.repo, ref, p, "file", len(content), blobSHA(content))
		e["encoding"] = "base64"
		e["content"] = base64Wrapped(content)
		return jsonResponse(http.StatusOK, e)
	}
	entries := dirEntries(cm.tree, p)
	if len(entries) == 0 {
		return notFound(c)
	}
	list := []any{}
	for _, e := range entries {
		list = append(list, s.contentEntryJSON(c.repo, ref, e.path, e.typ, e.size, e.sha))
	}
	return jsonResponse(http.StatusOK, list)
}

type dirEntry struct {
	path, typ, sha string
	size           int
}

// dirEntries lists the immediate children of dir in tree, directories
// first-class like git trees (their sha is derived from their contents).
func dirEntries(tree map[string]string, dir string) []dirEntry {
	prefix := dir + "/"
	if dir == "" {
		prefix = ""
	}
	subdirs := map[string][]string{}
	var out []dirEntry
	for p, content := range tree {
		if !strings.HasPrefix(p, prefix) {
			continue
		}
		rest := strings.TrimPrefix(p, prefix)
		if name, _, isDir := strings.Cut(rest, "/"); isDir {
			subdirs[prefix+name] = append(subdirs[prefix+name], p+"\x00"+content)
		} else {
			out = append(out, dirEntry{path: p, typ: "file", sha: blobSHA(content), size: len(content)})
		}
	}
	for d, members := range subdirs {
		sort.Strings(members)
		out = append(out, dirEntry{path: d, typ: "dir", sha: blobSHA(strings.Join(members, "\n")), size: 0})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].path < out[j].path })
	return out
}

// archiveLinkLifetime is how long a tarball link works, as GitHub's links
// for private repositories.
const archiveLinkLifetime = 5 * time.Minute

// GET /repos/{owner}/{repo}/tarball/{ref}: a 302 to a short-lived download
// URL on the simulator, like GitHub's redirect to its codeload host.
func (s *Sim) getTarball(c *call) *response {
	cm := c.repo.resolveRef(c.params["ref"])
	if cm == nil {
		return notFound(c)
	}
	tok, err := randomAlnum(32)
	if err != nil {
		return jsonResponse(http.StatusInternalServerError, errorBody(err.Error(), defaultDocURL))
	}
	s.st.archives[tok] = &archiveLink{repo: c.repo, sha: cm.sha, expiresAt: c.now.Add(archiveLinkLifetime)}
	loc := s.baseURL + codeloadPrefix + c.repo.fullName() + "/legacy.tar.gz/" + cm.sha + "?token=" + url.QueryEscape(tok)
	resp := &response{status: http.StatusFound, header: http.Header{}}
	resp.header.Set("Location", loc)
	return resp
}
