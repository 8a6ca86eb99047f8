package ghsim

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Result is what an admin mutation returns. Which of ID, Number and SHA are
// set depends on the call; Delivery is the webhook it sent, if any.
type Result struct {
	ID       int64     `json:"id,omitempty"`     // installation, repository or comment id
	Number   int       `json:"number,omitempty"` // pull request number
	SHA      string    `json:"sha,omitempty"`    // commit created (repository tip, PR head, merge commit)
	Delivery *Delivery `json:"delivery,omitempty"`
}

// InstallationSpec describes an installation of the App on an account.
type InstallationSpec struct {
	Account     string `json:"account"`
	AccountType string `json:"account_type,omitempty"` // "Organization" (default) or "User"
	Sender      string `json:"sender,omitempty"`       // who installed; default the account for a User, "<account>-admin" for an Organization
}

// RepoSpec describes a repository to create in an installation. Owner must
// be the account of an installation.
type RepoSpec struct {
	Owner         string            `json:"owner"`
	Name          string            `json:"name"`
	Private       bool              `json:"private,omitempty"`
	DefaultBranch string            `json:"default_branch,omitempty"` // default "main"
	Files         map[string]string `json:"files,omitempty"`          // path -> content of the first commit
}

// PRSpec describes a pull request: Head is a new branch made from the base
// branch plus Files and minus Delete, in a fork owned by ForkOwner if set.
type PRSpec struct {
	Owner     string            `json:"owner,omitempty"`
	Repo      string            `json:"repo,omitempty"`
	Head      string            `json:"head"`
	Base      string            `json:"base,omitempty"` // default: the default branch
	Title     string            `json:"title,omitempty"`
	Body      string            `json:"body,omitempty"`
	Author    string            `json:"author,omitempty"` // default: ForkOwner, else "octocat"
	ForkOwner string            `json:"fork_owner,omitempty"`
	Files     map[string]string `json:"files,omitempty"`
	Delete    []string          `json:"delete,omitempty"`
	Draft     bool              `json:"draft,omitempty"`
}

// PushSpec describes a commit pushed to a pull request's head branch.
type PushSpec struct {
	Owner   string            `json:"owner,omitempty"`
	Repo    string            `json:"repo,omitempty"`
	Number  int               `json:"number,omitempty"`
	Files   map[string]string `json:"files,omitempty"`
	Delete  []string          `json:"delete,omitempty"`
	Message string            `json:"message,omitempty"`
}

// CommentSpec describes a comment a person (or another bot) makes on a PR.
type CommentSpec struct {
	Owner  string `json:"owner,omitempty"`
	Repo   string `json:"repo,omitempty"`
	Number int    `json:"number,omitempty"`
	User   string `json:"user"`
	// Permission, if set, becomes User's permission on the repository
	// (admin, maintain, write, triage, read or none), which the collaborator
	// permission endpoint then answers.
	Permission string `json:"permission,omitempty"`
	// Bot makes User a bot account (type Bot, login ending in "[bot]").
	Bot  bool   `json:"bot,omitempty"`
	Body string `json:"body"`
}

// mutate runs fn with s.mu held, then builds, validates and sends the
// webhook fn asked for, without the lock.
func (s *Sim) mutate(ctx context.Context, fn func(now time.Time) (Result, *pendingHook, error)) (Result, error) {
	s.mu.Lock()
	res, h, err := fn(s.now())
	var d *Delivery
	if err == nil && h != nil {
		var payload []byte
		if payload, err = s.buildPayload(h.event, h.action, h.overlay); err == nil {
			d, err = s.queueDelivery(h.event, h.action, h.inst.id, payload)
		}
	}
	s.mu.Unlock()
	if err != nil {
		return Result{}, err
	}
	if d != nil {
		sent := s.send(ctx, d)
		res.Delivery = &sent
	}
	return res, nil
}

// CreateInstallation installs the App on an account (with no repositories
// yet) and sends installation.created.
func (s *Sim) CreateInstallation(ctx context.Context, spec InstallationSpec) (Result, error) {
	if spec.Account == "" {
		return Result{}, fmt.Errorf("ghsim: installation needs an account")
	}
	typ := spec.AccountType
	switch typ {
	case "":
		typ = typeOrg
	case typeOrg, typeUser:
	default:
		return Result{}, fmt.Errorf("ghsim: account type %q is neither Organization nor User", typ)
	}
	return s.mutate(ctx, func(now time.Time) (Result, *pendingHook, error) {
		for _, inst := range s.st.installations {
			if strings.EqualFold(inst.account.login, spec.Account) {
				return Result{}, nil, fmt.Errorf("ghsim: the App is already installed on %s", spec.Account)
			}
		}
		acct := s.st.accountFor(spec.Account, typ)
		if acct.typ != typ {
			return Result{}, nil, fmt.Errorf("ghsim: %s is a %s", spec.Account, acct.typ)
		}
		sender := acct
		if spec.Sender != "" {
			sender = s.st.accountFor(spec.Sender, typeUser)
		} else if typ == typeOrg {
			sender = s.st.accountFor(spec.Account+"-admin", typeUser)
		}
		inst := &installation{id: s.st.newID(), account: acct, createdAt: now}
		s.st.installations[inst.id] = inst
		return Result{ID: inst.id}, s.installationCreatedHook(inst, sender), nil
	})
}

func (s *Sim) installationOf(login string) *installation {
	for _, inst := range s.st.installations {
		if strings.EqualFold(inst.account.login, login) {
			return inst
		}
	}
	return nil
}

// CreateRepo creates a repository with one commit in the installation on
// its owner, and sends installation_repositories.added.
func (s *Sim) CreateRepo(ctx context.Context, spec RepoSpec) (Result, error) {
	if spec.Name == "" || strings.Contains(spec.Name, "/") {
		return Result{}, fmt.Errorf("ghsim: bad repository name %q", spec.Name)
	}
	if spec.DefaultBranch == "" {
		spec.DefaultBranch = "main"
	}
	return s.mutate(ctx, func(now time.Time) (Result, *pendingHook, error) {
		inst := s.installationOf(spec.Owner)
		if inst == nil {
			return Result{}, nil, fmt.Errorf("ghsim: the App is not installed on %q (create the installation first)", spec.Owner)
		}
		key := strings.ToLower(inst.account.login + "/" + spec.Name)
		if s.st.repos[key] != nil {
			return Result{}, nil, fmt.Errorf("ghsim: repository %s exists", key)
		}
		r := &repo{
			id: s.st.newID(), owner: inst.account, name: spec.Name, private: spec.Private,
			defaultBranch: spec.DefaultBranch, branches: map[string]string{}, commits: map[string]*commit{},
			inst: inst, pulls: map[int]*pull{}, suites: map[string]int64{}, perms: map[string]string{},
			createdAt: now, pushedAt: now,
		}
		c := s.st.newCommit(r, nil, spec.Files, nil, "Initial commit", inst.account, now)
		r.branches[r.defaultBranch] = c.sha
		s.st.repos[key] = r
		s.st.reposByID[r.id] = r
		inst.repos = append(inst.repos, r)
		return Result{ID: r.id, SHA: c.sha}, s.repositoriesAddedHook(inst, []*repo{r}, s.senderFor(inst)), nil
	})
}

// senderFor is who acts for an account in admin-made events.
func (s *Sim) senderFor(inst *installation) *account {
	if inst.account.typ == typeUser {
		return inst.account
	}
	return s.st.accountFor(inst.account.login+"-admin", typeUser)
}

// repoNamed finds an installation's repository. Must hold s.mu.
func (s *Sim) repoNamed(owner, name string) (*repo, error) {
	r := s.st.repos[strings.ToLower(owner+"/"+name)]
	if r == nil || r.inst == nil {
		return nil, fmt.Errorf("ghsim: no repository %s/%s in an installation", owner, name)
	}
	return r, nil
}

func validPermission(p string) bool {
	switch p {
	case "admin", "maintain", "write", "triage", "read", "none":
		return true
	}
	return false
}

// SetPermission sets a user's permission on a repository.
func (s *Sim) SetPermission(owner, repoName, user, permission string) error {
	if !validPermission(permission) {
		return fmt.Errorf("ghsim: unknown permission %q", permission)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.repoNamed(owner, repoName)
	if err != nil {
		return err
	}
	s.st.accountFor(user, "")
	r.perms[strings.ToLower(user)] = permission
	return nil
}
