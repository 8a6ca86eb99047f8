package ghsim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// adminPrefix is where the admin API lives, beside the REST API.
const adminPrefix = "/_ghsim/"

// serveAdmin serves the admin API: the Go admin methods as JSON endpoints
// (documented in README.md). It is unauthenticated: the simulator is a local
// test tool.
func (s *Sim) serveAdmin(w http.ResponseWriter, r *http.Request) {
	s.admin.ServeHTTP(w, r)
}

func (s *Sim) adminMux() *http.ServeMux {
	m := http.NewServeMux()
	const p = "/_ghsim"
	m.HandleFunc("GET "+p+"/app", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{
			"id": s.AppID(), "slug": s.AppSlug(), "bot_login": s.BotLogin(), "base_url": s.BaseURL(),
			"now": s.Now(),
		})
	})
	m.HandleFunc("POST "+p+"/installations", func(w http.ResponseWriter, r *http.Request) {
		var spec InstallationSpec
		if readJSON(w, r, &spec) {
			reply(w)(s.CreateInstallation(r.Context(), spec))
		}
	})
	m.HandleFunc("POST "+p+"/installations/{id}/token", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
		if err != nil {
			writeError(w, fmt.Errorf("installation id: %w", err))
			return
		}
		tok, exp, err := s.InstallationToken(id)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"token": tok, "expires_at": exp})
	})
	m.HandleFunc("POST "+p+"/repos", func(w http.ResponseWriter, r *http.Request) {
		var spec RepoSpec
		if readJSON(w, r, &spec) {
			reply(w)(s.CreateRepo(r.Context(), spec))
		}
	})
	m.HandleFunc("PUT "+p+"/repos/{owner}/{repo}/permissions/{user}", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Permission string `json:"permission"`
		}
		if !readJSON(w, r, &body) {
			return
		}
		if err := s.SetPermission(r.PathValue("owner"), r.PathValue("repo"), r.PathValue("user"), body.Permission); err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"permission": body.Permission})
	})
	m.HandleFunc("POST "+p+"/repos/{owner}/{repo}/pulls", func(w http.ResponseWriter, r *http.Request) {
		var spec PRSpec
		if readJSON(w, r, &spec) {
			spec.Owner, spec.Repo = r.PathValue("owner"), r.PathValue("repo")
			reply(w)(s.OpenPR(r.Context(), spec))
		}
	})
	m.HandleFunc("POST "+p+"/repos/{owner}/{repo}/pulls/{number}/commits", func(w http.ResponseWriter, r *http.Request) {
		var spec PushSpec
		if n, ok := prNumber(w, r); ok && readJSON(w, r, &spec) {
			spec.Owner, spec.Repo, spec.Number = r.PathValue("owner"), r.PathValue("repo"), n
			reply(w)(s.PushToPR(r.Context(), spec))
		}
	})
	m.HandleFunc("POST "+p+"/repos/{owner}/{repo}/pulls/{number}/comments", func(w http.ResponseWriter, r *http.Request) {
		var spec CommentSpec
		if n, ok := prNumber(w, r); ok && readJSON(w, r, &spec) {
			spec.Owner, spec.Repo, spec.Number = r.PathValue("owner"), r.PathValue("repo"), n
			reply(w)(s.Comment(r.Context(), spec))
		}
	})
	m.HandleFunc("GET "+p+"/repos/{owner}/{repo}/pulls/{number}/comments", func(w http.ResponseWriter, r *http.Request) {
		if n, ok := prNumber(w, r); ok {
			list[Comment](w)(s.Comments(r.PathValue("owner"), r.PathValue("repo"), n))
		}
	})
	m.HandleFunc("POST "+p+"/repos/{owner}/{repo}/pulls/{number}/close", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Merged bool   `json:"merged"`
			User   string `json:"user"`
		}
		if n, ok := prNumber(w, r); ok && readJSON(w, r, &body) {
			reply(w)(s.ClosePR(r.Context(), r.PathValue("owner"), r.PathValue("repo"), n, body.Merged, body.User))
		}
	})
	m.HandleFunc("POST "+p+"/repos/{owner}/{repo}/pulls/{number}/reopen", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			User string `json:"user"`
		}
		if n, ok := prNumber(w, r); ok && readJSON(w, r, &body) {
			reply(w)(s.ReopenPR(r.Context(), r.PathValue("owner"), r.PathValue("repo"), n, body.User))
		}
	})
	m.HandleFunc("GET "+p+"/repos/{owner}/{repo}/check-runs", func(w http.ResponseWriter, r *http.Request) {
		list[CheckRun](w)(s.CheckRuns(r.PathValue("owner"), r.PathValue("repo"), r.URL.Query().Get("sha")))
	})
	m.HandleFunc("POST "+p+"/repos/{owner}/{repo}/check-runs/{id}/requested-action", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Identifier string `json:"identifier"`
			User       string `json:"user"`
		}
		if id, ok := pathID(w, r); ok && readJSON(w, r, &body) {
			reply(w)(s.ClickCheckRunAction(r.Context(), r.PathValue("owner"), r.PathValue("repo"), id, body.Identifier, body.User))
		}
	})
	m.HandleFunc("POST "+p+"/repos/{owner}/{repo}/check-runs/{id}/rerequest", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			User string `json:"user"`
		}
		if id, ok := pathID(w, r); ok && readJSON(w, r, &body) {
			reply(w)(s.RerequestCheckRun(r.Context(), r.PathValue("owner"), r.PathValue("repo"), id, body.User))
		}
	})
	m.HandleFunc("GET "+p+"/repos/{owner}/{repo}/comments/{id}/reactions", func(w http.ResponseWriter, r *http.Request) {
		if id, ok := pathID(w, r); ok {
			list[Reaction](w)(s.Reactions(r.PathValue("owner"), r.PathValue("repo"), id))
		}
	})
	m.HandleFunc("GET "+p+"/deliveries", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Deliveries())
	})
	m.HandleFunc("POST "+p+"/deliveries/{guid}/redeliver", func(w http.ResponseWriter, r *http.Request) {
		d, err := s.Redeliver(r.Context(), r.PathValue("guid"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, d)
	})
	m.HandleFunc("GET "+p+"/requests", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Requests())
	})
	m.HandleFunc("POST "+p+"/clock/advance", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Duration string `json:"duration"` // Go syntax, e.g. "61m"
		}
		if !readJSON(w, r, &body) {
			return
		}
		d, err := time.ParseDuration(body.Duration)
		if err != nil || d < 0 {
			writeError(w, fmt.Errorf("duration %q: want a positive Go duration like \"61m\"", body.Duration))
			return
		}
		s.Advance(d)
		writeJSON(w, http.StatusOK, map[string]any{"now": s.Now()})
	})
	m.HandleFunc("POST "+p+"/faults", func(w http.ResponseWriter, r *http.Request) {
		var f Fault
		if !readJSON(w, r, &f) {
			return
		}
		if err := s.AddFault(f); err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, f)
	})
	m.HandleFunc("DELETE "+p+"/faults", func(w http.ResponseWriter, r *http.Request) {
		s.ClearFaults()
		w.WriteHeader(http.StatusNoContent)
	})
	m.HandleFunc("PUT "+p+"/webhook", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			URL string `json:"url"`
		}
		if readJSON(w, r, &body) {
			s.SetWebhookURL(body.URL)
			writeJSON(w, http.StatusOK, body)
		}
	})
	return m
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	dec.DisallowUnknownFields() // a typo in a test's request should not pass silently
	if err := dec.Decode(v); err != nil {
		writeError(w, fmt.Errorf("request body: %w", err))
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
}

func reply(w http.ResponseWriter) func(Result, error) {
	return func(res Result, err error) {
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	}
}

func list[T any](w http.ResponseWriter) func([]T, error) {
	return func(v []T, err error) {
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

func prNumber(w http.ResponseWriter, r *http.Request) (int, bool) {
	n, err := strconv.Atoi(r.PathValue("number"))
	if err != nil {
		writeError(w, fmt.Errorf("pull request number: %w", err))
		return 0, false
	}
	return n, true
}

func pathID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		writeError(w, fmt.Errorf("id: %w", err))
		return 0, false
	}
	return id, true
}
