package ghsim

import (
	"archive/tar"
	"compress/gzip"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/bradleyfalzon/ghinstallation/v2"
	"github.com/google/go-github/v60/github"
	"github.com/gregjones/httpcache"
)

// TestGoGitHubClient drives every served endpoint through the clients
// Stagely uses (go-github with ghinstallation's App and installation
// transports), proving the simulator's answers decode and its checks accept
// what they send.
func TestGoGitHubClient(t *testing.T) {
	f := newFixture(t)
	pr := f.openPR(PRSpec{Head: "feature/x", Title: "Add x", Author: "alice", Files: map[string]string{"x.txt": "x\n", "README.md": "# widgets!\n"}})
	ctx := f.ctx

	appTr, err := ghinstallation.NewAppsTransport(http.DefaultTransport, f.sim.AppID(), f.sim.AppPrivateKeyPEM())
	if err != nil {
		t.Fatal(err)
	}
	appTr.BaseURL = f.srv.URL + "/api/v3"
	appClient := f.rebase(github.NewClient(&http.Client{Transport: appTr}))
	instTr := ghinstallation.NewFromAppsTransport(appTr, f.inst)
	instTr.BaseURL = appTr.BaseURL
	gh := f.rebase(github.NewClient(&http.Client{Transport: instTr}))

	app, _, err := appClient.Apps.Get(ctx, "")
	must(t, err)
	if app.GetID() != 4242 || app.GetSlug() != "stagely-test" || app.GetOwner().GetLogin() == "" {
		t.Errorf("app %+v", app)
	}
	inst, _, err := appClient.Apps.GetInstallation(ctx, f.inst)
	must(t, err)
	if inst.GetAccount().GetLogin() != "acme" || inst.GetAppID() != 4242 || inst.GetTargetType() != "Organization" {
		t.Errorf("installation %+v", inst)
	}

	repos, _, err := gh.Apps.ListRepos(ctx, nil)
	must(t, err)
	if repos.GetTotalCount() != 1 || repos.Repositories[0].GetFullName() != "acme/widgets" {
		t.Errorf("installation repos %+v", repos)
	}
	repo, _, err := gh.Repositories.Get(ctx, "acme", "widgets")
	must(t, err)
	if !repo.GetPrivate() || repo.GetDefaultBranch() != "main" || repo.GetOwner().GetType() != "Organization" {
		t.Errorf("repo %+v", repo)
	}

	p, _, err := gh.PullRequests.Get(ctx, "acme", "widgets", pr.Number)
	must(t, err)
	if p.GetHead().GetSHA() != pr.SHA || p.GetHead().GetRef() != "feature/x" || p.GetBase().GetSHA() != f.sha ||
		p.GetUser().GetLogin() != "alice" || p.GetTitle() != "Add x" || p.GetState() != "open" || p.GetChangedFiles() != 2 {
		t.Errorf("pull request: head %s@%s base %s user %s title %q state %s files %d",
			p.GetHead().GetRef(), p.GetHead().GetSHA(), p.GetBase().GetSHA(), p.GetUser().GetLogin(), p.GetTitle(), p.GetState(), p.GetChangedFiles())
	}

	// Contents at the PR head, at the base, by branch, and missing.
	fc, _, _, err := gh.Repositories.GetContents(ctx, "acme", "widgets", "README.md", &github.RepositoryContentGetOptions{Ref: pr.SHA})
	must(t, err)
	if got, _ := fc.GetContent(); got != "# widgets!\n" {
		t.Errorf("README at head = %q", got)
	}
	fc, _, _, err = gh.Repositories.GetContents(ctx, "acme", "widgets", "README.md", &github.RepositoryContentGetOptions{Ref: f.sha})
	must(t, err)
	if got, _ := fc.GetContent(); got != "# widgets\n" {
		t.Errorf("README at base = %q", got)
	}
	fc, _, _, err = gh.Repositories.GetContents(ctx, "acme", "widgets", "src/internal/lib.go", &github.RepositoryContentGetOptions{Ref: "feature/x"})
	must(t, err)
	if got, _ := fc.GetContent(); got != "package internal\n" {
		t.Errorf("lib.go = %q", got)
	}
	_, dir, _, err := gh.Repositories.GetContents(ctx, "acme", "widgets", "src", nil)
	must(t, err)
	var names []string
	for _, e := range dir {
		names = append(names, e.GetType()+":"+e.GetPath())
	}
	if strings.Join(names, ",") != "dir:src/internal,file:src/main.go" {
		t.Errorf("src listing %v", names)
	}
	_, _, resp, err := gh.Repositories.GetContents(ctx, "acme", "widgets", "nope.txt", &github.RepositoryContentGetOptions{Ref: pr.SHA})
	wantAPIError(t, resp, err, 404, "Not Found")

	// Tarball: a redirect to a download of the tree.
	link, _, err := gh.Repositories.GetArchiveLink(ctx, "acme", "widgets", github.Tarball, &github.RepositoryContentGetOptions{Ref: pr.SHA}, 0)
	must(t, err)
	files, top, comment := fetchTarball(t, link.String())
	if top != "acme-widgets-"+pr.SHA[:7]+"/" || comment != pr.SHA {
		t.Errorf("tarball top dir %q, pax comment %q", top, comment)
	}
	if files["x.txt"] != "x\n" || files["src/main.go"] == "" || len(files) != 5 {
		t.Errorf("tarball files %v", files)
	}

	// Check runs.
	cr, _, err := gh.Checks.CreateCheckRun(ctx, "acme", "widgets", github.CreateCheckRunOptions{
		Name: "stagely/preview", HeadSHA: pr.SHA, ExternalID: github.String("env-1"), DetailsURL: github.String("https://stagely.example/env/1"),
		Status:  github.String("in_progress"),
		Output:  &github.CheckRunOutput{Title: github.String("Deploying"), Summary: github.String("Starting")},
		Actions: []*github.CheckRunAction{{Label: "Redeploy", Description: "Deploy again", Identifier: "redeploy"}},
	})
	must(t, err)
	if cr.GetApp().GetID() != 4242 || cr.GetStatus() != "in_progress" || cr.GetExternalID() != "env-1" ||
		len(cr.PullRequests) != 1 || cr.PullRequests[0].GetNumber() != pr.Number || cr.GetCheckSuite().GetID() == 0 {
		t.Errorf("created check run %+v", cr)
	}
	cr, _, err = gh.Checks.UpdateCheckRun(ctx, "acme", "widgets", cr.GetID(), github.UpdateCheckRunOptions{
		Name: "stagely/preview", Conclusion: github.String("success"),
		Output: &github.CheckRunOutput{Title: github.String("Ready"), Summary: github.String("Up at …")},
	})
	must(t, err)
	if cr.GetStatus() != "completed" || cr.GetConclusion() != "success" || cr.CompletedAt == nil || cr.GetOutput().GetTitle() != "Ready" {
		t.Errorf("updated check run %+v", cr)
	}
	got, _, err := gh.Checks.GetCheckRun(ctx, "acme", "widgets", cr.GetID())
	must(t, err)
	if got.GetConclusion() != "success" || got.GetDetailsURL() != "https://stagely.example/env/1" {
		t.Errorf("got check run %+v", got)
	}
	_, _, err = gh.Checks.CreateCheckRun(ctx, "acme", "widgets", github.CreateCheckRunOptions{Name: "stagely/preview", HeadSHA: pr.SHA})
	must(t, err)
	_, _, err = gh.Checks.CreateCheckRun(ctx, "acme", "widgets", github.CreateCheckRunOptions{Name: "other", HeadSHA: pr.SHA})
	must(t, err)
	list, _, err := gh.Checks.ListCheckRunsForRef(ctx, "acme", "widgets", pr.SHA, &github.ListCheckRunsOptions{CheckName: github.String("stagely/preview")})
	must(t, err)
	if list.GetTotal() != 1 || list.CheckRuns[0].GetStatus() != "queued" {
		t.Errorf("latest stagely/preview runs: %d", list.GetTotal())
	}
	list, _, err = gh.Checks.ListCheckRunsForRef(ctx, "acme", "widgets", "feature/x", &github.ListCheckRunsOptions{Filter: github.String("all")})
	must(t, err)
	if list.GetTotal() != 3 {
		t.Errorf("all runs on the branch: %d", list.GetTotal())
	}
	list, resp, err = gh.Checks.ListCheckRunsForRef(ctx, "acme", "widgets", pr.SHA, &github.ListCheckRunsOptions{Filter: github.String("all"), ListOptions: github.ListOptions{PerPage: 2}})
	must(t, err)
	if len(list.CheckRuns) != 2 || resp.NextPage != 2 || resp.LastPage != 2 {
		t.Errorf("paged runs: %d, next %d, last %d", len(list.CheckRuns), resp.NextPage, resp.LastPage)
	}

	// Comments, paginated.
	var ids []int64
	for i := range 7 {
		c, _, err := gh.Issues.CreateComment(ctx, "acme", "widgets", pr.Number, &github.IssueComment{Body: github.String("comment " + string(rune('a'+i)))})
		must(t, err)
		if c.GetUser().GetLogin() != "stagely-test[bot]" || c.GetUser().GetType() != "Bot" {
			t.Errorf("comment author %s (%s)", c.GetUser().GetLogin(), c.GetUser().GetType())
		}
		ids = append(ids, c.GetID())
	}
	var bodies []string
	opts := &github.IssueListCommentsOptions{ListOptions: github.ListOptions{PerPage: 3}}
	pages := 0
	for {
		cs, resp, err := gh.Issues.ListComments(ctx, "acme", "widgets", pr.Number, opts)
		must(t, err)
		pages++
		for _, c := range cs {
			bodies = append(bodies, c.GetBody())
		}
		if resp.NextPage == 0 {
			break
		}
		opts.Page = resp.NextPage
	}
	if pages != 3 || len(bodies) != 7 || bodies[6] != "comment g" {
		t.Errorf("paged comments: %d pages, %v", pages, bodies)
	}
	c, _, err := gh.Issues.EditComment(ctx, "acme", "widgets", ids[0], &github.IssueComment{Body: github.String("edited")})
	must(t, err)
	c, _, err = gh.Issues.GetComment(ctx, "acme", "widgets", c.GetID())
	must(t, err)
	if c.GetBody() != "edited" {
		t.Errorf("edited comment body %q", c.GetBody())
	}

	// Reactions: 201 the first time, 200 when repeated.
	r1, resp, err := gh.Reactions.CreateIssueCommentReaction(ctx, "acme", "widgets", ids[1], "eyes")
	must(t, err)
	if resp.StatusCode != 201 {
		t.Errorf("first reaction: %d", resp.StatusCode)
	}
	r2, resp, err := gh.Reactions.CreateIssueCommentReaction(ctx, "acme", "widgets", ids[1], "eyes")
	must(t, err)
	if resp.StatusCode != 200 || r2.GetID() != r1.GetID() {
		t.Errorf("repeated reaction: %d, id %d vs %d", resp.StatusCode, r2.GetID(), r1.GetID())
	}
	_, resp, err = gh.Reactions.CreateIssueCommentReaction(ctx, "acme", "widgets", ids[1], "rocket")
	must(t, err)
	if resp.StatusCode != 201 {
		t.Errorf("other reaction: %d", resp.StatusCode)
	}
	rs, _, err := gh.Reactions.ListIssueCommentReactions(ctx, "acme", "widgets", ids[1], nil)
	must(t, err)
	if len(rs) != 2 || rs[0].GetUser().GetLogin() != "stagely-test[bot]" || rs[0].GetContent() != "eyes" {
		t.Errorf("reactions %+v", rs)
	}
	httpResp, body := f.do("GET", "/repos/acme/widgets/issues/comments/"+itoa(ids[1])+"/reactions?content=rocket", f.token(), nil)
	wantStatus(t, httpResp, body, 200)
	if got := decode[[]github.Reaction](t, body); len(got) != 1 || got[0].GetContent() != "rocket" {
		t.Errorf("rocket reactions %s", body)
	}
	c, _, err = gh.Issues.GetComment(ctx, "acme", "widgets", ids[1])
	must(t, err)
	if c.GetReactions().GetTotalCount() != 2 || c.GetReactions().GetEyes() != 1 {
		t.Errorf("comment reaction rollup %+v", c.GetReactions())
	}

	// Permissions.
	for _, tt := range []struct{ user, perm, want string }{
		{"bob", "admin", "admin"}, {"carol", "write", "write"}, {"dave", "read", "read"}, {"erin", "none", "none"}, {"mona", "maintain", "write"},
	} {
		if _, err := f.sim.Comment(ctx, CommentSpec{Owner: "acme", Repo: "widgets", Number: pr.Number, User: tt.user, Permission: tt.perm, Body: "/stagely deploy"}); err != nil {
			t.Fatal(err)
		}
		pl, _, err := gh.Repositories.GetPermissionLevel(ctx, "acme", "widgets", tt.user)
		must(t, err)
		if pl.GetPermission() != tt.want || pl.GetUser().GetLogin() != tt.user {
			t.Errorf("%s: permission %q, want %q", tt.user, pl.GetPermission(), tt.want)
		}
	}
	_, resp, err = gh.Repositories.GetPermissionLevel(ctx, "acme", "widgets", "nobody-ever")
	wantAPIError(t, resp, err, 404, "Not Found")

	// Everything the clients sent was valid.
	for _, r := range f.sim.Requests() {
		if !r.Valid && r.Status < 400 {
			t.Errorf("request %s %s answered %d but recorded invalid: %s", r.Method, r.Path, r.Status, r.Error)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantAPIError(t *testing.T, resp *github.Response, err error, status int, message string) {
	t.Helper()
	var er *github.ErrorResponse
	if !errors.As(err, &er) {
		t.Fatalf("error %v, want a GitHub error response", err)
	}
	if resp.StatusCode != status || er.Message != message {
		t.Errorf("got %d %q, want %d %q", resp.StatusCode, er.Message, status, message)
	}
}

// fetchTarball downloads a tarball and returns its files by path below the
// top directory, the top directory and the pax global comment.
func fetchTarball(t *testing.T, u string) (map[string]string, string, string) {
	t.Helper()
	resp, err := http.Get(u)
	must(t, err)
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("download %s: %d", u, resp.StatusCode)
	}
	zr, err := gzip.NewReader(resp.Body)
	must(t, err)
	tr := tar.NewReader(zr)
	files := map[string]string{}
	top, comment := "", ""
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		must(t, err)
		if h.Typeflag == tar.TypeXGlobalHeader {
			// GitHub's tarballs start with one; Go's reader returns it as
			// an entry that extractors must skip.
			comment = h.PAXRecords["comment"]
			continue
		}
		if top == "" {
			top = h.Name
		}
		if !strings.HasPrefix(h.Name, top) {
			t.Errorf("%s is outside %s", h.Name, top)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			must(t, err)
			files[strings.TrimPrefix(h.Name, top)] = string(b)
		}
	}
	return files, top, comment
}

func TestTarballLinkExpires(t *testing.T) {
	f := newFixture(t)
	resp, body := f.do("GET", "/repos/acme/widgets/tarball/main", f.token(), nil)
	wantStatus(t, resp, body, 302)
	loc := resp.Header.Get("Location")
	files, top, _ := fetchTarball(t, loc)
	if top != "acme-widgets-"+f.sha[:7]+"/" || files["stagely.yaml"] != "version: 1\n" {
		t.Errorf("tarball %s %v", top, files)
	}
	f.sim.Advance(6 * time.Minute)
	r2, err := http.Get(loc)
	must(t, err)
	r2.Body.Close()
	if r2.StatusCode != 404 {
		t.Errorf("expired link: %d", r2.StatusCode)
	}
	resp, body = f.do("GET", "/repos/acme/widgets/tarball/"+strings.Repeat("0", 40), f.token(), nil)
	wantStatus(t, resp, body, 404)
}

func TestETag(t *testing.T) {
	f := newFixture(t)
	pr := f.openPR(PRSpec{Head: "feature"})
	tok := f.token()
	res, err := f.sim.Comment(f.ctx, CommentSpec{Owner: "acme", Repo: "widgets", Number: pr.Number, User: "alice", Body: "hi"})
	must(t, err)
	path := "/repos/acme/widgets/issues/comments/" + itoa(res.ID)

	resp, body := f.do("GET", path, tok, nil)
	wantStatus(t, resp, body, 200)
	etag := resp.Header.Get("ETag")
	remaining := resp.Header.Get("X-RateLimit-Remaining")
	if etag == "" || resp.Header.Get("Cache-Control") == "" || remaining == "" {
		t.Fatalf("headers %v", resp.Header)
	}
	resp, body = f.do("GET", path, tok, nil, "If-None-Match", etag)
	wantStatus(t, resp, body, 304)
	if len(body) != 0 || resp.Header.Get("ETag") != etag {
		t.Errorf("304 body %q etag %q", body, resp.Header.Get("ETag"))
	}
	if got := resp.Header.Get("X-RateLimit-Remaining"); got != remaining {
		t.Errorf("a 304 cost rate limit: remaining %s, was %s", got, remaining)
	}
	resp, body = f.do("PATCH", path, tok, map[string]string{"body": "changed"})
	wantStatus(t, resp, body, 200)
	resp, body = f.do("GET", path, tok, nil, "If-None-Match", etag)
	wantStatus(t, resp, body, 200)
	if resp.Header.Get("ETag") == etag {
		t.Error("ETag did not change with the content")
	}
	resp, body = f.do("GET", path, tok, nil, "If-None-Match", `"other", `+resp.Header.Get("ETag"))
	wantStatus(t, resp, body, 304)
}

func TestPaginationLimits(t *testing.T) {
	f := newFixture(t)
	pr := f.openPR(PRSpec{Head: "feature"})
	for range 105 {
		_, err := f.sim.Comment(f.ctx, CommentSpec{Owner: "acme", Repo: "widgets", Number: pr.Number, User: "alice", Body: "hi"})
		must(t, err)
	}
	tok := f.token()
	tests := []struct {
		query    string
		want     int
		wantRels []string
	}{
		{"", 30, []string{"last", "next"}},
		{"?per_page=100", 100, []string{"last", "next"}},
		{"?per_page=500", 100, []string{"last", "next"}},
		{"?per_page=100&page=2", 5, []string{"first", "prev"}},
		{"?per_page=50&page=2", 50, []string{"first", "last", "next", "prev"}},
		{"?page=9", 0, []string{"first", "prev"}},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			resp, body := f.do("GET", "/repos/acme/widgets/issues/1/comments"+tt.query, tok, nil)
			wantStatus(t, resp, body, 200)
			if got := len(decode[[]any](t, body)); got != tt.want {
				t.Errorf("%d comments, want %d", got, tt.want)
			}
			var rels []string
			for _, l := range strings.Split(resp.Header.Get("Link"), ", ") {
				if _, rel, ok := strings.Cut(l, `rel="`); ok {
					rels = append(rels, strings.TrimSuffix(rel, `"`))
				}
			}
			sort.Strings(rels)
			if strings.Join(rels, ",") != strings.Join(tt.wantRels, ",") {
				t.Errorf("Link rels %v, want %v (%s)", rels, tt.wantRels, resp.Header.Get("Link"))
			}
		})
	}
}

func TestContentsEncoding(t *testing.T) {
	f := newFixture(t)
	big := strings.Repeat("0123456789", 20)
	pr := f.openPR(PRSpec{Head: "feature", Files: map[string]string{"big.txt": big}, Delete: []string{"README.md"}})
	tok := f.token()
	resp, body := f.do("GET", "/repos/acme/widgets/contents/big.txt?ref="+pr.SHA, tok, nil)
	wantStatus(t, resp, body, 200)
	got := decode[struct {
		Content, Encoding, SHA string
		Size                   int
	}](t, body)
	lines := strings.Split(strings.TrimSuffix(got.Content, "\n"), "\n")
	if got.Encoding != "base64" || got.Size != len(big) || len(lines[0]) != 60 || got.SHA != blobSHA(big) {
		t.Errorf("content %+v", got)
	}
	dec, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(got.Content, "\n", ""))
	must(t, err)
	if string(dec) != big {
		t.Error("content does not decode to the file")
	}
	tests := []struct {
		path string
		want int
	}{
		{"/repos/acme/widgets/contents/README.md?ref=" + pr.SHA, 404},                     // deleted in the PR
		{"/repos/acme/widgets/contents/README.md?ref=" + pr.SHA[:7], 404},                 // short sha
		{"/repos/acme/widgets/contents/big.txt?ref=" + pr.SHA[:7], 200},                   // short sha
		{"/repos/acme/widgets/contents/README.md", 200},                                   // default branch
		{"/repos/acme/widgets/contents/README.md?ref=refs/heads/main", 200},               // full ref
		{"/repos/acme/widgets/contents/big.txt?ref=refs/pull/1/head", 200},                // PR ref
		{"/repos/acme/widgets/contents/README.md?ref=no-such-branch", 404},                // bad ref
		{"/repos/acme/widgets/contents/src/main.go?ref=" + f.sha, 200},                    // nested
		{"/repos/acme/widgets/contents/src%2Fmain.go?ref=" + f.sha, 200},                  // escaped slash
		{"/repos/acme/widgets/contents/src/nope.go?ref=" + f.sha, 404},                    // missing
		{"/api/v3/repos/acme/widgets/contents/stagely.yaml?ref=" + f.sha, 200},            // enterprise prefix
		{"/repos/acme/widgets/contents/stagely.yaml?ref=" + strings.Repeat("1", 40), 404}, // unknown sha
	}
	for _, tt := range tests {
		resp, body := f.do("GET", tt.path, tok, nil)
		if resp.StatusCode != tt.want {
			t.Errorf("%s: %d, want %d (%s)", tt.path, resp.StatusCode, tt.want, body)
		}
	}
}

// TestHTTPCacheRevalidation: go-githubapp caches with gregjones/httpcache;
// a revalidation must come back as a 304 the cache turns into the stored
// answer, and GitHub's max-age=60 lets the cache answer without asking.
func TestHTTPCacheRevalidation(t *testing.T) {
	f := newFixture(t)
	cache := httpcache.NewMemoryCacheTransport()
	cache.MarkCachedResponses = true
	client := f.rebase(github.NewClient(&http.Client{Transport: cache}).WithAuthToken(f.token()))
	ctx := f.ctx

	_, resp, err := client.Repositories.Get(ctx, "acme", "widgets")
	must(t, err)
	if resp.Header.Get(httpcache.XFromCache) != "" {
		t.Fatal("first answer came from the cache")
	}
	n := len(f.sim.Requests())
	_, resp, err = client.Repositories.Get(ctx, "acme", "widgets")
	must(t, err)
	if resp.Header.Get(httpcache.XFromCache) == "" || len(f.sim.Requests()) != n {
		t.Error("within max-age the cache should answer alone, like against GitHub")
	}

	// Always revalidating, as go-githubapp's WithClientCaching(true, …)
	// does: it rewrites max-age to 0 in the answers the cache stores.
	validating := &httpcache.Transport{Cache: httpcache.NewMemoryCache(), MarkCachedResponses: true,
		Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := http.DefaultTransport.RoundTrip(r)
			if resp != nil {
				resp.Header.Set("Cache-Control", strings.Replace(resp.Header.Get("Cache-Control"), "max-age=60", "max-age=0", 1))
			}
			return resp, err
		})}
	client = f.rebase(github.NewClient(&http.Client{Transport: validating}).WithAuthToken(f.token()))
	_, _, err = client.Repositories.Get(ctx, "acme", "widgets")
	must(t, err)
	n = len(f.sim.Requests())
	repo, resp, err := client.Repositories.Get(ctx, "acme", "widgets")
	must(t, err)
	reqs := f.sim.Requests()
	if len(reqs) != n+1 || reqs[n].Status != http.StatusNotModified || resp.Header.Get(httpcache.XFromCache) == "" || repo.GetFullName() != "acme/widgets" {
		t.Errorf("revalidation: %d requests, last status %d, from cache %q, repo %q",
			len(reqs)-n, reqs[len(reqs)-1].Status, resp.Header.Get(httpcache.XFromCache), repo.GetFullName())
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
