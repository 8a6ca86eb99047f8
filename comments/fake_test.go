package comments

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-github/v60/github"
)

const bot = "stagely[bot]"

// fakeGitHub is the slice of GitHub's REST API these tests need, in
// memory, behind an httptest server that go-github talks to: issue
// comments (listed in pages of pageSize with Link headers), reactions and
// collaborator permissions. It logs every request as "METHOD /path".
type fakeGitHub struct {
	t        *testing.T
	pageSize int
	perms    map[string]string // login -> permission; missing is a 404

	mu        sync.Mutex
	comments  []*github.IssueComment
	nextID    int64
	reactions []string // "commentID:content"
	requests  []string
	fail      map[string]int // "METHOD /path" -> status to answer instead
}

func newFake(t *testing.T) (*fakeGitHub, *github.Client) {
	f := &fakeGitHub{t: t, pageSize: 100, nextID: 100, perms: map[string]string{}, fail: map[string]int{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	client := github.NewClient(srv.Client())
	base, err := url.Parse(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	client.BaseURL = base
	return f, client
}

// add stores a comment by login on pull request pr and returns its id.
func (f *fakeGitHub) add(pr int, login, body string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nextID++
	f.comments = append(f.comments, &github.IssueComment{
		ID:       github.Int64(f.nextID),
		Body:     github.String(body),
		User:     &github.User{Login: github.String(login)},
		IssueURL: github.String(fmt.Sprintf("https://api.github.invalid/repos/acme/shop/issues/%d", pr)),
	})
	return f.nextID
}

func (f *fakeGitHub) remove(id int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, c := range f.comments {
		if c.GetID() == id {
			f.comments = append(f.comments[:i], f.comments[i+1:]...)
			return
		}
	}
}

func (f *fakeGitHub) body(id int64) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.comments {
		if c.GetID() == id {
			return c.GetBody()
		}
	}
	return ""
}

// count returns how many requests started with prefix ("PATCH ", "POST /repos/acme/shop/issues/7/comments").
func (f *fakeGitHub) count(prefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.requests {
		if strings.HasPrefix(r, prefix) {
			n++
		}
	}
	return n
}

func (f *fakeGitHub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := r.Method + " " + r.URL.Path
	f.requests = append(f.requests, key)
	if code := f.fail[key]; code != 0 {
		writeJSON(w, code, map[string]string{"message": "injected failure"})
		return
	}
	p := strings.Split(strings.Trim(r.URL.Path, "/"), "/") // repos acme shop ...
	if len(p) < 4 || p[0] != "repos" || p[1] != "acme" || p[2] != "shop" {
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
		return
	}
	p = p[3:]
	switch {
	case len(p) == 3 && p[0] == "issues" && p[2] == "comments" && r.Method == http.MethodGet:
		pr, _ := strconv.Atoi(p[1])
		var mine []*github.IssueComment
		for _, c := range f.comments {
			if strings.HasSuffix(c.GetIssueURL(), "/issues/"+strconv.Itoa(pr)) {
				mine = append(mine, c)
			}
		}
		q := r.URL.Query()
		size := f.pageSize
		if n, err := strconv.Atoi(q.Get("per_page")); err == nil && n < size {
			size = n
		}
		page, _ := strconv.Atoi(q.Get("page"))
		page = max(page, 1)
		last := max(1, (len(mine)+size-1)/size)
		if page < last {
			q.Set("page", strconv.Itoa(page+1))
			w.Header().Set("Link", fmt.Sprintf(`<http://%s%s?%s>; rel="next"`, r.Host, r.URL.Path, q.Encode()))
		}
		writeJSON(w, http.StatusOK, mine[min((page-1)*size, len(mine)):min(page*size, len(mine))])
	case len(p) == 3 && p[0] == "issues" && p[2] == "comments" && r.Method == http.MethodPost:
		var in github.IssueComment
		f.decode(r, &in)
		f.nextID++
		pr, _ := strconv.Atoi(p[1])
		c := &github.IssueComment{ID: github.Int64(f.nextID), Body: in.Body, User: &github.User{Login: github.String(bot)},
			IssueURL: github.String(fmt.Sprintf("https://api.github.invalid/repos/acme/shop/issues/%d", pr))}
		f.comments = append(f.comments, c)
		writeJSON(w, http.StatusCreated, c)
	case len(p) == 3 && p[0] == "issues" && p[1] == "comments" && (r.Method == http.MethodGet || r.Method == http.MethodPatch):
		id, _ := strconv.ParseInt(p[2], 10, 64)
		for _, c := range f.comments {
			if c.GetID() != id {
				continue
			}
			if r.Method == http.MethodPatch {
				var in github.IssueComment
				f.decode(r, &in)
				c.Body = in.Body
			}
			writeJSON(w, http.StatusOK, c)
			return
		}
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
	case len(p) == 4 && p[0] == "issues" && p[1] == "comments" && p[3] == "reactions" && r.Method == http.MethodPost:
		var in struct{ Content string }
		f.decode(r, &in)
		f.reactions = append(f.reactions, p[2]+":"+in.Content)
		writeJSON(w, http.StatusCreated, github.Reaction{Content: github.String(in.Content)})
	case len(p) == 3 && p[0] == "collaborators" && p[2] == "permission" && r.Method == http.MethodGet:
		perm, ok := f.perms[p[1]]
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
			return
		}
		writeJSON(w, http.StatusOK, github.RepositoryPermissionLevel{Permission: github.String(perm), User: &github.User{Login: github.String(p[1])}})
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
	}
}

func (f *fakeGitHub) decode(r *http.Request, v any) {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		f.t.Errorf("%s %s: body is not JSON: %v", r.Method, r.URL.Path, err)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
