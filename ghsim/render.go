package ghsim

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// The renderers below produce GitHub's JSON shapes from the state. They
// include every field the description marks required, with null where GitHub
// sends null, so that responses validate and go-github decodes them. All must
// be called with s.mu held.

type obj = map[string]any

func ts(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }

func tsOrNil(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return ts(t)
}

func strOrNil(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func nodeID(prefix string, id int64) string {
	return fmt.Sprintf("%s_kwDOGhSim%s", prefix, base64.RawStdEncoding.EncodeToString([]byte(fmt.Sprint(id))))
}

func (s *Sim) api(format string, a ...any) string { return s.baseURL + fmt.Sprintf(format, a...) }

func (s *Sim) host() string {
	if u, err := url.Parse(s.baseURL); err == nil && u.Host != "" {
		return u.Host
	}
	return "localhost"
}

func (s *Sim) userJSON(a *account) obj {
	login := url.PathEscape(a.login)
	u := s.api("/users/%s", login)
	html := s.api("/%s", login)
	if a.typ == typeBot {
		html = s.api("/apps/%s", url.PathEscape(strings.TrimSuffix(a.login, "[bot]")))
	}
	return obj{
		"login":               a.login,
		"id":                  a.id,
		"node_id":             nodeID(nodePrefix(a.typ), a.id),
		"avatar_url":          s.api("/avatars/u/%d?v=4", a.id),
		"gravatar_id":         "",
		"url":                 u,
		"html_url":            html,
		"followers_url":       u + "/followers",
		"following_url":       u + "/following{/other_user}",
		"gists_url":           u + "/gists{/gist_id}",
		"starred_url":         u + "/starred{/owner}{/repo}",
		"subscriptions_url":   u + "/subscriptions",
		"organizations_url":   u + "/orgs",
		"repos_url":           u + "/repos",
		"events_url":          u + "/events{/privacy}",
		"received_events_url": u + "/received_events",
		"type":                a.typ,
		"user_view_type":      "public",
		"site_admin":          false,
	}
}

func nodePrefix(typ string) string {
	switch typ {
	case typeOrg:
		return "O"
	case typeBot:
		return "BOT"
	}
	return "U"
}

func (s *Sim) orgJSON(a *account) obj {
	u := s.api("/orgs/%s", url.PathEscape(a.login))
	return obj{
		"login":              a.login,
		"id":                 a.id,
		"node_id":            nodeID("O", a.id),
		"url":                u,
		"repos_url":          u + "/repos",
		"events_url":         u + "/events",
		"hooks_url":          u + "/hooks",
		"issues_url":         u + "/issues",
		"members_url":        u + "/members{/member}",
		"public_members_url": u + "/public_members{/member}",
		"avatar_url":         s.api("/avatars/u/%d?v=4", a.id),
		"description":        nil,
	}
}

func appPermissions() obj {
	return obj{"checks": "write", "contents": "read", "issues": "write", "metadata": "read", "pull_requests": "write"}
}

func appEvents() []string {
	return []string{"check_run", "issue_comment", "pull_request", "repository"}
}

func (s *Sim) appJSON() obj {
	return obj{
		"id":           s.cfg.AppID,
		"slug":         s.cfg.AppSlug,
		"node_id":      nodeID("A", s.cfg.AppID),
		"client_id":    fmt.Sprintf("Iv1.%016x", s.cfg.AppID),
		"owner":        s.userJSON(s.app),
		"name":         s.cfg.AppSlug,
		"description":  "GitHub App simulated by ghsim",
		"external_url": s.baseURL,
		"html_url":     s.api("/apps/%s", url.PathEscape(s.cfg.AppSlug)),
		"created_at":   ts(s.appCreated),
		"updated_at":   ts(s.appCreated),
		"permissions":  appPermissions(),
		"events":       appEvents(),
		// installations_count is only sent on GET /app.
	}
}

func (s *Sim) installationJSON(inst *installation) obj {
	html := s.api("/settings/installations/%d", inst.id)
	if inst.account.typ == typeOrg {
		html = s.api("/organizations/%s/settings/installations/%d", url.PathEscape(inst.account.login), inst.id)
	}
	return obj{
		"id":                        inst.id,
		"client_id":                 fmt.Sprintf("Iv1.%016x", s.cfg.AppID),
		"account":                   s.userJSON(inst.account),
		"repository_selection":      "selected",
		"access_tokens_url":         s.api("/app/installations/%d/access_tokens", inst.id),
		"repositories_url":          s.api("/installation/repositories"),
		"html_url":                  html,
		"app_id":                    s.cfg.AppID,
		"app_slug":                  s.cfg.AppSlug,
		"target_id":                 inst.account.id,
		"target_type":               inst.account.typ,
		"permissions":               appPermissions(),
		"events":                    appEvents(),
		"created_at":                ts(inst.createdAt),
		"updated_at":                ts(inst.createdAt),
		"single_file_name":          nil,
		"has_multiple_single_files": false,
		"single_file_paths":         []string{},
		"suspended_by":              nil,
		"suspended_at":              nil,
	}
}
