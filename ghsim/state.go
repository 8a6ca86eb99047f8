package ghsim

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"time"
)

// state is everything the simulated GitHub knows. It is guarded by Sim.mu.
type state struct {
	nextID        int64               // one counter for every kind of id keeps ids unique and readable
	accounts      map[string]*account // by lower-cased login, as GitHub logins are case-insensitive
	installations map[int64]*installation
	repos         map[string]*repo // by lower-cased "owner/name"
	reposByID     map[int64]*repo
	tokens        map[string]*token
	archives      map[string]*archiveLink // one-off tarball download tokens
	commitSeq     int
}

func newState() *state {
	return &state{
		nextID:        1000,
		accounts:      map[string]*account{},
		installations: map[int64]*installation{},
		repos:         map[string]*repo{},
		reposByID:     map[int64]*repo{},
		tokens:        map[string]*token{},
		archives:      map[string]*archiveLink{},
	}
}

func (st *state) newID() int64 {
	st.nextID++
	return st.nextID
}

// Account types as GitHub spells them in the "type" field of a user.
const (
	typeUser = "User"
	typeOrg  = "Organization"
	typeBot  = "Bot"
)

type account struct {
	login string
	id    int64
	typ   string
}

// accountFor returns the account with that login, creating it on first use:
// the simulator has no sign-up, a login exists once something mentions it.
func (st *state) accountFor(login, typ string) *account {
	key := strings.ToLower(login)
	if a, ok := st.accounts[key]; ok {
		return a
	}
	if typ == "" {
		typ = typeUser
		if strings.HasSuffix(login, "[bot]") {
			typ = typeBot
		}
	}
	a := &account{login: login, id: st.newID(), typ: typ}
	st.accounts[key] = a
	return a
}

type installation struct {
	id        int64
	account   *account
	repos     []*repo
	createdAt time.Time
}

type repo struct {
	id            int64
	owner         *account
	name          string
	private       bool
	defaultBranch string
	branches      map[string]string // branch -> commit sha
	// commits is the object store. A fork shares it with its parent, like a
	// GitHub repository network: the base repository can serve a fork PR's
	// head commit (GitHub exposes it as refs/pull/N/head).
	commits   map[string]*commit
	inst      *installation // nil for a fork outside any installation
	parent    *repo         // set for forks
	pulls     map[int]*pull
	nextIssue int
	comments  []*comment
	checkRuns []*checkRun
	suites    map[string]int64  // head sha -> check suite id
	perms     map[string]string // lower-cased login -> admin|maintain|write|triage|read|none
	createdAt time.Time
	pushedAt  time.Time
}

func (r *repo) fullName() string { return r.owner.login + "/" + r.name }

type commit struct {
	sha     string
	parents []string
	tree    map[string]string // path -> content
	message string
	author  *account
	time    time.Time
}

type pull struct {
	id, issueID    int64
	number         int
	title, body    string
	user           *account
	headRepo       *repo
	headRef        string
	headSHA        string
	baseRef        string
	baseSHA        string // base branch tip when the PR was opened or last merged
	state          string // open|closed
	merged         bool
	mergedBy       *account
	mergeCommitSHA string
	draft          bool
	createdAt      time.Time
	updatedAt      time.Time
	closedAt       time.Time
	mergedAt       time.Time
	commitCount    int
}

type comment struct {
	id          int64
	issueNumber int
	user        *account
	body        string
	createdAt   time.Time
	updatedAt   time.Time
	reactions   []*reaction
}

type reaction struct {
	id        int64
	user      *account
	content   string
	createdAt time.Time
}

type checkRun struct {
	id          int64
	suiteID     int64
	headSHA     string
	name        string
	status      string
	conclusion  string // "" while not completed
	externalID  *string
	detailsURL  *string
	startedAt   time.Time
	completedAt time.Time
	output      checkOutput
	actions     []CheckRunAction
	annotations int
}

type checkOutput struct {
	title, summary, text *string
}

type token struct {
	value     string
	inst      *installation
	repoIDs   map[int64]bool // nil: every repository of the installation
	expiresAt time.Time
}

// archiveLink is a short-lived tarball download URL, like GitHub's codeload
// links for private repositories (valid five minutes).
type archiveLink struct {
	repo      *repo
	sha       string
	expiresAt time.Time
}

// newCommit stores a commit whose tree is parent's tree with files written and
// deletions applied, and returns it. The sha is derived from the content and a
// sequence number, so it is unique, 40 hex digits, and reproducible run to run.
func (st *state) newCommit(r *repo, parent *commit, files map[string]string, deletions []string, message string, author *account, now time.Time) *commit {
	tree := map[string]string{}
	var parents []string
	if parent != nil {
		for p, c := range parent.tree {
			tree[p] = c
		}
		parents = []string{parent.sha}
	}
	for p, c := range files {
		tree[cleanPath(p)] = c
	}
	for _, p := range deletions {
		delete(tree, cleanPath(p))
	}
	st.commitSeq++
	h := sha1.New()
	fmt.Fprintf(h, "%d\x00%s\x00%s\x00%s\x00", st.commitSeq, r.fullName(), strings.Join(parents, ","), message)
	paths := sortedKeys(tree)
	for _, p := range paths {
		fmt.Fprintf(h, "%s\x00%s\x00", p, tree[p])
	}
	c := &commit{
		sha:     hex.EncodeToString(h.Sum(nil)),
		parents: parents,
		tree:    tree,
		message: message,
		author:  author,
		time:    now,
	}
	r.commits[c.sha] = c
	return c
}

func cleanPath(p string) string { return strings.Trim(p, "/") }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// resolveRef finds the commit a ref names the way GitHub does for the
// contents, tarball and commits endpoints: a full or abbreviated sha, a
// branch, refs/heads/<branch>, or refs/pull/<n>/head. Empty means the default
// branch.
func (r *repo) resolveRef(ref string) *commit {
	if ref == "" {
		ref = r.defaultBranch
	}
	ref = strings.TrimPrefix(ref, "refs/heads/")
	if sha, ok := r.branches[ref]; ok {
		return r.commits[sha]
	}
	var n int
	if _, err := fmt.Sscanf(ref, "refs/pull/%d/head", &n); err == nil {
		if p := r.pulls[n]; p != nil {
			return r.commits[p.headSHA]
		}
	}
	if c, ok := r.commits[ref]; ok {
		return c
	}
	if len(ref) >= 7 && len(ref) < 40 && isHex(ref) {
		var found *commit
		for sha, c := range r.commits {
			if strings.HasPrefix(sha, ref) {
				if found != nil {
					return nil // ambiguous
				}
				found = c
			}
		}
		return found
	}
	return nil
}

func isHex(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// permission answers the collaborator permission of login on r, as GitHub's
// permission endpoint would: the owning user is admin, others have what was
// granted, or nothing (read on a public repository).
func (r *repo) permission(a *account) string {
	if a == r.owner {
		return "admin"
	}
	if p, ok := r.perms[strings.ToLower(a.login)]; ok {
		return p
	}
	if !r.private {
		return "read"
	}
	return "none"
}

// authorAssociation is GitHub's author_association of a on r.
func (r *repo) authorAssociation(a *account) string {
	if a == r.owner {
		return "OWNER"
	}
	if p, ok := r.perms[strings.ToLower(a.login)]; ok && p != "none" {
		return "COLLABORATOR"
	}
	return "NONE"
}

func (r *repo) findComment(id int64) *comment {
	for _, c := range r.comments {
		if c.id == id {
			return c
		}
	}
	return nil
}

func (r *repo) findCheckRun(id int64) *checkRun {
	for _, c := range r.checkRuns {
		if c.id == id {
			return c
		}
	}
	return nil
}

// suiteFor returns the id of the check suite GitHub would attach to runs on
// sha: one per commit for our single app.
func (st *state) suiteFor(r *repo, sha string) int64 {
	if id, ok := r.suites[sha]; ok {
		return id
	}
	id := st.newID()
	r.suites[sha] = id
	return id
}

// headBranchFor names the branch of r whose tip is sha, as check suites report
// it (nil when no branch points there).
func (r *repo) headBranchFor(sha string) *string {
	for _, b := range sortedKeys(r.branches) {
		if r.branches[b] == sha {
			return &b
		}
	}
	return nil
}
