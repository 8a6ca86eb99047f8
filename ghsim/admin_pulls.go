package ghsim

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// OpenPR opens a pull request and sends pull_request.opened.
func (s *Sim) OpenPR(ctx context.Context, spec PRSpec) (Result, error) {
	if spec.Head == "" {
		return Result{}, fmt.Errorf("ghsim: pull request needs a head branch")
	}
	return s.mutate(ctx, func(now time.Time) (Result, *pendingHook, error) {
		r, err := s.repoNamed(spec.Owner, spec.Repo)
		if err != nil {
			return Result{}, nil, err
		}
		baseRef := spec.Base
		if baseRef == "" {
			baseRef = r.defaultBranch
		}
		baseSHA, ok := r.branches[baseRef]
		if !ok {
			return Result{}, nil, fmt.Errorf("ghsim: no base branch %q in %s", baseRef, r.fullName())
		}
		author := spec.Author
		if author == "" {
			author = spec.ForkOwner
		}
		if author == "" {
			author = "octocat"
		}
		user := s.st.accountFor(author, "")
		headRepo := r
		if spec.ForkOwner != "" && !strings.EqualFold(spec.ForkOwner, r.owner.login) {
			headRepo = s.forkOf(r, s.st.accountFor(spec.ForkOwner, typeUser), now)
		}
		if _, exists := headRepo.branches[spec.Head]; exists {
			return Result{}, nil, fmt.Errorf("ghsim: branch %s exists in %s", spec.Head, headRepo.fullName())
		}
		c := s.st.newCommit(r, r.commits[baseSHA], spec.Files, spec.Delete, "Change "+spec.Head, user, now)
		headRepo.branches[spec.Head] = c.sha
		headRepo.pushedAt = now
		r.nextIssue++
		title := spec.Title
		if title == "" {
			title = "Update " + spec.Head
		}
		p := &pull{
			id: s.st.newID(), issueID: s.st.newID(), number: r.nextIssue, title: title, body: spec.Body,
			user: user, headRepo: headRepo, headRef: spec.Head, headSHA: c.sha, baseRef: baseRef, baseSHA: baseSHA,
			state: "open", draft: spec.Draft, createdAt: now, updatedAt: now, commitCount: 1,
		}
		r.pulls[p.number] = p
		return Result{Number: p.number, SHA: c.sha}, s.pullRequestHook("opened", r, p, user), nil
	})
}

// forkOf returns owner's fork of r, creating it. A fork shares r's commits
// and lives outside any installation, so the App cannot read it directly.
func (s *Sim) forkOf(r *repo, owner *account, now time.Time) *repo {
	key := strings.ToLower(owner.login + "/" + r.name)
	if f := s.st.repos[key]; f != nil {
		return f
	}
	f := &repo{
		id: s.st.newID(), owner: owner, name: r.name, private: r.private, defaultBranch: r.defaultBranch,
		branches: map[string]string{r.defaultBranch: r.branches[r.defaultBranch]}, commits: r.commits,
		parent: r, pulls: map[int]*pull{}, suites: map[string]int64{}, perms: map[string]string{},
		createdAt: now, pushedAt: now,
	}
	s.st.repos[key] = f
	s.st.reposByID[f.id] = f
	return f
}

// PushToPR adds a commit to an open pull request's head branch and sends
// pull_request.synchronize.
func (s *Sim) PushToPR(ctx context.Context, spec PushSpec) (Result, error) {
	return s.mutate(ctx, func(now time.Time) (Result, *pendingHook, error) {
		r, p, err := s.pullNamed(spec.Owner, spec.Repo, spec.Number)
		if err != nil {
			return Result{}, nil, err
		}
		if p.state != "open" {
			return Result{}, nil, fmt.Errorf("ghsim: pull request #%d is closed", p.number)
		}
		msg := spec.Message
		if msg == "" {
			msg = "Update " + p.headRef
		}
		before := p.headSHA
		c := s.st.newCommit(r, r.commits[before], spec.Files, spec.Delete, msg, p.user, now)
		p.headRepo.branches[p.headRef] = c.sha
		p.headRepo.pushedAt = now
		p.headSHA, p.updatedAt = c.sha, now
		p.commitCount++
		h := s.pullRequestHook("synchronize", r, p, p.user)
		h.overlay["before"], h.overlay["after"] = before, c.sha
		return Result{SHA: c.sha}, h, nil
	})
}

// Comment adds a comment to a pull request as a person (or, with Bot, a bot)
// and sends issue_comment.created.
func (s *Sim) Comment(ctx context.Context, spec CommentSpec) (Result, error) {
	if spec.User == "" || spec.Body == "" {
		return Result{}, fmt.Errorf("ghsim: a comment needs a user and a body")
	}
	if spec.Permission != "" && !validPermission(spec.Permission) {
		return Result{}, fmt.Errorf("ghsim: unknown permission %q", spec.Permission)
	}
	login, typ := spec.User, typeUser
	if spec.Bot {
		typ = typeBot
		if !strings.HasSuffix(login, "[bot]") {
			login += "[bot]"
		}
	}
	return s.mutate(ctx, func(now time.Time) (Result, *pendingHook, error) {
		r, p, err := s.pullNamed(spec.Owner, spec.Repo, spec.Number)
		if err != nil {
			return Result{}, nil, err
		}
		user := s.st.accountFor(login, typ)
		if user.typ != typ {
			return Result{}, nil, fmt.Errorf("ghsim: %s is a %s", login, user.typ)
		}
		if spec.Permission != "" {
			r.perms[strings.ToLower(login)] = spec.Permission
		}
		c := &comment{id: s.st.newID(), issueNumber: p.number, user: user, body: spec.Body, createdAt: now, updatedAt: now}
		r.comments = append(r.comments, c)
		p.updatedAt = now
		return Result{ID: c.id}, s.issueCommentHook(r, p, c), nil
	})
}

// ClosePR closes a pull request as user, merging it into its base branch if
// merged, and sends pull_request.closed (merged true or false).
func (s *Sim) ClosePR(ctx context.Context, owner, repoName string, number int, merged bool, user string) (Result, error) {
	return s.mutate(ctx, func(now time.Time) (Result, *pendingHook, error) {
		r, p, err := s.pullNamed(owner, repoName, number)
		if err != nil {
			return Result{}, nil, err
		}
		if p.state != "open" {
			return Result{}, nil, fmt.Errorf("ghsim: pull request #%d is not open", number)
		}
		actor := p.user
		if user != "" {
			actor = s.st.accountFor(user, "")
		}
		res := Result{Number: number}
		p.state, p.closedAt, p.updatedAt = "closed", now, now
		if merged {
			base := r.commits[r.branches[p.baseRef]]
			head := r.commits[p.headSHA]
			files, deletions := changes(r.commits[p.baseSHA], head)
			m := s.st.newCommit(r, base, files, deletions, fmt.Sprintf("Merge pull request #%d from %s", number, p.headRef), actor, now)
			m.parents = append(m.parents, head.sha)
			r.branches[p.baseRef] = m.sha
			r.pushedAt = now
			p.baseSHA = base.sha
			p.merged, p.mergedAt, p.mergedBy, p.mergeCommitSHA = true, now, actor, m.sha
			res.SHA = m.sha
		}
		return res, s.pullRequestHook("closed", r, p, actor), nil
	})
}

// changes lists what head changed relative to base: files written, deleted.
func changes(base, head *commit) (map[string]string, []string) {
	files := map[string]string{}
	var deletions []string
	for p, c := range head.tree {
		if bc, ok := base.tree[p]; !ok || bc != c {
			files[p] = c
		}
	}
	for p := range base.tree {
		if _, ok := head.tree[p]; !ok {
			deletions = append(deletions, p)
		}
	}
	return files, deletions
}

// ReopenPR reopens a closed, unmerged pull request and sends
// pull_request.reopened.
func (s *Sim) ReopenPR(ctx context.Context, owner, repoName string, number int, user string) (Result, error) {
	return s.mutate(ctx, func(now time.Time) (Result, *pendingHook, error) {
		r, p, err := s.pullNamed(owner, repoName, number)
		if err != nil {
			return Result{}, nil, err
		}
		if p.state != "closed" || p.merged {
			return Result{}, nil, fmt.Errorf("ghsim: pull request #%d is not closed or was merged", number)
		}
		actor := p.user
		if user != "" {
			actor = s.st.accountFor(user, "")
		}
		p.state, p.closedAt, p.updatedAt = "open", time.Time{}, now
		return Result{Number: number}, s.pullRequestHook("reopened", r, p, actor), nil
	})
}

func (s *Sim) pullNamed(owner, name string, number int) (*repo, *pull, error) {
	r, err := s.repoNamed(owner, name)
	if err != nil {
		return nil, nil, err
	}
	p := r.pulls[number]
	if p == nil {
		return nil, nil, fmt.Errorf("ghsim: no pull request %s/%s#%d", owner, name, number)
	}
	return r, p, nil
}
