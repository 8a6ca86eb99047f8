package ghsim

import (
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/url"
	"path"
	"strings"
)

func (s *Sim) repoJSON(r *repo) obj {
	full := r.owner.login + "/" + r.name
	u := s.api("/repos/%s", full)
	html := s.api("/%s", full)
	open := 0
	for _, p := range r.pulls {
		if p.state == "open" {
			open++
		}
	}
	visibility := "public"
	if r.private {
		visibility = "private"
	}
	size := 0
	if c := r.commits[r.branches[r.defaultBranch]]; c != nil {
		for _, content := range c.tree {
			size += len(content)
		}
	}
	return obj{
		"id":                          r.id,
		"node_id":                     nodeID("R", r.id),
		"name":                        r.name,
		"full_name":                   full,
		"private":                     r.private,
		"owner":                       s.userJSON(r.owner),
		"html_url":                    html,
		"description":                 nil,
		"fork":                        r.parent != nil,
		"url":                         u,
		"archive_url":                 u + "/{archive_format}{/ref}",
		"assignees_url":               u + "/assignees{/user}",
		"blobs_url":                   u + "/git/blobs{/sha}",
		"branches_url":                u + "/branches{/branch}",
		"collaborators_url":           u + "/collaborators{/collaborator}",
		"comments_url":                u + "/comments{/number}",
		"commits_url":                 u + "/commits{/sha}",
		"compare_url":                 u + "/compare/{base}...{head}",
		"contents_url":                u + "/contents/{+path}",
		"contributors_url":            u + "/contributors",
		"deployments_url":             u + "/deployments",
		"downloads_url":               u + "/downloads",
		"events_url":                  u + "/events",
		"forks_url":                   u + "/forks",
		"git_commits_url":             u + "/git/commits{/sha}",
		"git_refs_url":                u + "/git/refs{/sha}",
		"git_tags_url":                u + "/git/tags{/sha}",
		"git_url":                     "git://" + s.host() + "/" + full + ".git",
		"issue_comment_url":           u + "/issues/comments{/number}",
		"issue_events_url":            u + "/issues/events{/number}",
		"issues_url":                  u + "/issues{/number}",
		"keys_url":                    u + "/keys{/key_id}",
		"labels_url":                  u + "/labels{/name}",
		"languages_url":               u + "/languages",
		"merges_url":                  u + "/merges",
		"milestones_url":              u + "/milestones{/number}",
		"notifications_url":           u + "/notifications{?since,all,participating}",
		"pulls_url":                   u + "/pulls{/number}",
		"releases_url":                u + "/releases{/id}",
		"ssh_url":                     "git@" + s.host() + ":" + full + ".git",
		"stargazers_url":              u + "/stargazers",
		"statuses_url":                u + "/statuses/{sha}",
		"subscribers_url":             u + "/subscribers",
		"subscription_url":            u + "/subscription",
		"tags_url":                    u + "/tags",
		"teams_url":                   u + "/teams",
		"trees_url":                   u + "/git/trees{/sha}",
		"clone_url":                   html + ".git",
		"mirror_url":                  nil,
		"hooks_url":                   u + "/hooks",
		"svn_url":                     html,
		"homepage":                    nil,
		"language":                    nil,
		"forks_count":                 0,
		"forks":                       0,
		"stargazers_count":            0,
		"watchers_count":              0,
		"watchers":                    0,
		"subscribers_count":           0,
		"network_count":               0,
		"size":                        (size + 1023) / 1024,
		"default_branch":              r.defaultBranch,
		"open_issues_count":           open,
		"open_issues":                 open,
		"is_template":                 false,
		"topics":                      []string{},
		"has_issues":                  true,
		"has_projects":                true,
		"has_wiki":                    true,
		"has_pages":                   false,
		"has_downloads":               true,
		"has_discussions":             false,
		"archived":                    false,
		"disabled":                    false,
		"visibility":                  visibility,
		"pushed_at":                   ts(r.pushedAt),
		"created_at":                  ts(r.createdAt),
		"updated_at":                  ts(r.pushedAt),
		"allow_forking":               true,
		"web_commit_signoff_required": false,
		"license":                     nil,
	}
}

func (s *Sim) pullJSON(r *repo, p *pull) obj {
	full := r.fullName()
	u := s.api("/repos/%s/pulls/%d", full, p.number)
	html := s.api("/%s/pull/%d", full, p.number)
	issue := s.api("/repos/%s/issues/%d", full, p.number)
	baseSHA := p.baseSHA
	if p.state == "open" {
		baseSHA = r.branches[p.baseRef]
	}
	files, adds, dels := diffStats(r.commits[baseSHA], r.commits[p.headSHA])
	var mergedBy any
	if p.mergedBy != nil {
		mergedBy = s.userJSON(p.mergedBy)
	}
	var mergeable any = true
	state := "clean"
	if p.state == "closed" {
		mergeable, state = nil, "unknown"
	}
	link := func(href string) obj { return obj{"href": href} }
	return obj{
		"url":                 u,
		"id":                  p.id,
		"node_id":             nodeID("PR", p.id),
		"html_url":            html,
		"diff_url":            html + ".diff",
		"patch_url":           html + ".patch",
		"issue_url":           issue,
		"commits_url":         u + "/commits",
		"review_comments_url": u + "/comments",
		"review_comment_url":  s.api("/repos/%s/pulls/comments{/number}", full),
		"comments_url":        issue + "/comments",
		"statuses_url":        s.api("/repos/%s/statuses/%s", full, p.headSHA),
		"number":              p.number,
		"state":               p.state,
		"locked":              false,
		"title":               p.title,
		"user":                s.userJSON(p.user),
		"body":                strOrNil(p.body),
		"labels":              []any{},
		"milestone":           nil,
		"active_lock_reason":  nil,
		"created_at":          ts(p.createdAt),
		"updated_at":          ts(p.updatedAt),
		"closed_at":           tsOrNil(p.closedAt),
		"merged_at":           tsOrNil(p.mergedAt),
		"merge_commit_sha":    strOrNil(p.mergeCommitSHA),
		"assignee":            nil,
		"assignees":           []any{},
		"requested_reviewers": []any{},
		"requested_teams":     []any{},
		"head":                s.branchJSON(p.headRepo, p.headRef, p.headSHA),
		"base":                s.branchJSON(r, p.baseRef, baseSHA),
		"_links": obj{
			"self":            link(u),
			"html":            link(html),
			"issue":           link(issue),
			"comments":        link(issue + "/comments"),
			"review_comments": link(u + "/comments"),
			"review_comment":  link(s.api("/repos/%s/pulls/comments{/number}", full)),
			"commits":         link(u + "/commits"),
			"statuses":        link(s.api("/repos/%s/statuses/%s", full, p.headSHA)),
		},
		"author_association":    r.authorAssociation(p.user),
		"auto_merge":            nil,
		"draft":                 p.draft,
		"merged":                p.merged,
		"mergeable":             mergeable,
		"rebaseable":            mergeable,
		"mergeable_state":       state,
		"merged_by":             mergedBy,
		"comments":              countComments(r, p.number),
		"review_comments":       0,
		"maintainer_can_modify": false,
		"commits":               p.commitCount,
		"additions":             adds,
		"deletions":             dels,
		"changed_files":         files,
	}
}

func (s *Sim) branchJSON(r *repo, ref, sha string) obj {
	return obj{
		"label": r.owner.login + ":" + ref,
		"ref":   ref,
		"sha":   sha,
		"user":  s.userJSON(r.owner),
		"repo":  s.repoJSON(r),
	}
}

func countComments(r *repo, number int) int {
	n := 0
	for _, c := range r.comments {
		if c.issueNumber == number {
			n++
		}
	}
	return n
}

// diffStats counts changed files and added/deleted lines between two trees,
// comparing lines as multisets: close enough to git's numbers for a PR view.
func diffStats(base, head *commit) (files, adds, dels int) {
	if base == nil || head == nil {
		return 0, 0, 0
	}
	seen := map[string]bool{}
	for p, hc := range head.tree {
		seen[p] = true
		if bc, ok := base.tree[p]; !ok || bc != hc {
			files++
			a, d := lineDelta(base.tree[p], hc)
			adds, dels = adds+a, dels+d
		}
	}
	for p, bc := range base.tree {
		if !seen[p] {
			files++
			_, d := lineDelta(bc, "")
			dels += d
		}
	}
	return files, adds, dels
}

func lineDelta(old, new string) (adds, dels int) {
	count := map[string]int{}
	for _, l := range splitLines(old) {
		count[l]++
	}
	for _, l := range splitLines(new) {
		if count[l] > 0 {
			count[l]--
		} else {
			adds++
		}
	}
	for _, n := range count {
		dels += n
	}
	return adds, dels
}

func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

// blobSHA is git's object id of a blob with that content.
func blobSHA(content string) string {
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", len(content))
	h.Write([]byte(content))
	return hex.EncodeToString(h.Sum(nil))
}

// base64Wrapped encodes like GitHub's contents API: base64 in 60-character
// lines, each ending with a newline.
func base64Wrapped(content string) string {
	enc := base64.StdEncoding.EncodeToString([]byte(content))
	var b strings.Builder
	for len(enc) > 60 {
		b.WriteString(enc[:60])
		b.WriteByte('\n')
		enc = enc[60:]
	}
	if enc != "" {
		b.WriteString(enc)
		b.WriteByte('\n')
	}
	return b.String()
}

func (s *Sim) contentEntryJSON(r *repo, ref, p, typ string, size int, sha string) obj {
	full := r.fullName()
	self := s.api("/repos/%s/contents/%s?ref=%s", full, escapePath(p), url.QueryEscape(ref))
	gitURL := s.api("/repos/%s/git/blobs/%s", full, sha)
	html := s.api("/%s/blob/%s/%s", full, escapePath(ref), escapePath(p))
	if typ == "dir" {
		gitURL = s.api("/repos/%s/git/trees/%s", full, sha)
		html = s.api("/%s/tree/%s/%s", full, escapePath(ref), escapePath(p))
	}
	return obj{
		"type":         typ,
		"size":         size,
		"name":         path.Base(p),
		"path":         p,
		"sha":          sha,
		"url":          self,
		"git_url":      gitURL,
		"html_url":     html,
		"download_url": nil, // raw downloads are not simulated
		"_links":       obj{"self": self, "git": gitURL, "html": html},
	}
}

func escapePath(p string) string {
	parts := strings.Split(p, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}
