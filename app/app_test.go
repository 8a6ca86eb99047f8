package app_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/app"
	"github.com/stagely-dev/stagely/kv"
	"github.com/stagely-dev/stagely/store"
	"github.com/stagely-dev/stagely/store/storetest"
)

const secret = "test-webhook-secret-0123456789"

// webhooksDir holds GitHub's recorded example payloads.
const webhooksDir = "../../shared/testdata/github/webhooks"

func sign(body []byte, key string) string {
	m := hmac.New(sha256.New, []byte(key))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

type intake struct {
	h    http.Handler
	db   *bun.DB
	wake *kv.Memory
}

func newIntake(t testing.TB, appID int64) *intake {
	db := storetest.New(t)
	mem := kv.NewMemory()
	return &intake{h: app.NewIntake(&app.Base{DB: db, Wake: mem, AppID: appID, Logger: zerolog.Nop()}, secret), db: db, wake: mem}
}

func (in *intake) post(event, delivery string, body []byte, sig string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, app.HookPath, bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("X-GitHub-Event", event)
	r.Header.Set("X-GitHub-Delivery", delivery)
	if sig != "" {
		r.Header.Set("X-Hub-Signature-256", sig)
	}
	w := httptest.NewRecorder()
	in.h.ServeHTTP(w, r)
	return w
}

func count(t testing.TB, db *bun.DB, table string) int {
	t.Helper()
	n, err := db.NewSelect().Table(table).Count(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}

// TestRecordedPayloads feeds every example GitHub recorded through the
// dispatcher: handled events must record the right intent, every other
// event must be acknowledged and leave nothing behind, and none may fail.
func TestRecordedPayloads(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(webhooksDir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no recorded payloads in %s (%v): the shared test data must be beside the repository", webhooksDir, err)
	}
	in := newIntake(t, 0)
	ctx := context.Background()
	tables := []string{"audit_logs", "commands", "deployments", "environments", "repositories", "installations", "webhook_deliveries"}
	for i, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			if _, err := in.db.ExecContext(ctx, "TRUNCATE "+strings.Join(tables, ", ")+" CASCADE"); err != nil {
				t.Fatal(err)
			}
			body, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var p payload
			if err := json.Unmarshal(body, &p); err != nil {
				t.Fatal(err)
			}
			event := strings.SplitN(name, ".", 2)[0]
			w := in.post(event, fmt.Sprintf("delivery-%d", i), body, sign(body, secret))
			want := expect(event, p)
			if w.Code != want.status {
				t.Fatalf("status %d, want %d: %s", w.Code, want.status, w.Body)
			}
			var envs []store.Environment
			if err := in.db.NewSelect().Model(&envs).Scan(ctx); err != nil {
				t.Fatal(err)
			}
			if len(envs) != want.envs {
				t.Fatalf("%d environments, want %d", len(envs), want.envs)
			}
			if want.envs == 1 {
				e := envs[0]
				if e.DesiredState != want.desired || e.DesiredSHA != want.sha || e.PRNumber != p.PullRequest.Number {
					t.Errorf("environment desired %s@%s for #%d, want %s@%s for #%d",
						e.DesiredState, e.DesiredSHA, e.PRNumber, want.desired, want.sha, p.PullRequest.Number)
				}
			}
			if n := count(t, in.db, "commands"); n != want.commands {
				t.Errorf("%d commands, want %d", n, want.commands)
			}
			if n := count(t, in.db, "installations"); n < want.installations {
				t.Errorf("%d installations, want at least %d", n, want.installations)
			}
			if n := count(t, in.db, "repositories"); n != want.repos {
				t.Errorf("%d repositories, want %d", n, want.repos)
			}
			recorded := count(t, in.db, "webhook_deliveries")
			if (want.installations > 0 || want.envs > 0 || want.commands > 0) != (recorded == 1) {
				t.Errorf("%d deliveries recorded for an event whose intent is %+v", recorded, want)
			}
		})
	}
}

// payload is the part of a webhook the expectations are derived from.
type payload struct {
	Action       string `json:"action"`
	Installation *struct {
		ID int64 `json:"id"`
	} `json:"installation"`
	PullRequest struct {
		Number int `json:"number"`
		Head   struct {
			SHA string `json:"sha"`
		} `json:"head"`
	} `json:"pull_request"`
	Repositories        []json.RawMessage `json:"repositories"`
	RepositoriesAdded   []json.RawMessage `json:"repositories_added"`
	RepositoriesRemoved []json.RawMessage `json:"repositories_removed"`
	Comment             struct {
		Body string `json:"body"`
	} `json:"comment"`
	Issue struct {
		PullRequest json.RawMessage `json:"pull_request"`
	} `json:"issue"`
	CheckRun struct {
		PullRequests []json.RawMessage `json:"pull_requests"`
	} `json:"check_run"`
	RequestedAction struct {
		Identifier string `json:"identifier"`
	} `json:"requested_action"`
}

type expectation struct {
	status                               int
	envs, commands, installations, repos int
	desired, sha                         string
}

// expect states what Stagely must do with a payload, from the rules in
// the issue rather than from the code under test.
func expect(event string, p payload) expectation {
	installed := p.Installation != nil && p.Installation.ID != 0
	switch event {
	case "pull_request":
		e := expectation{status: http.StatusOK}
		if !installed {
			return e
		}
		switch p.Action {
		case "opened", "reopened", "synchronize":
			return expectation{status: 200, envs: 1, installations: 1, repos: 1, desired: store.DesiredRunning, sha: p.PullRequest.Head.SHA}
		case "closed":
			return expectation{status: 200, envs: 1, installations: 1, repos: 1, desired: store.DesiredDestroyed, sha: p.PullRequest.Head.SHA}
		}
		return e
	case "issue_comment":
		e := expectation{status: http.StatusOK}
		if installed && p.Action == "created" && len(p.Issue.PullRequest) > 0 && strings.HasPrefix(strings.ToLower(strings.TrimSpace(p.Comment.Body)), "/stagely") {
			return expectation{status: 200, envs: 1, commands: 1, installations: 1, repos: 1}
		}
		return e
	case "check_run":
		e := expectation{status: http.StatusOK}
		button := p.Action == "requested_action" && (p.RequestedAction.Identifier == "redeploy" ||
			p.RequestedAction.Identifier == "destroy" || p.RequestedAction.Identifier == "deploy")
		if installed && (p.Action == "rerequested" || button) && len(p.CheckRun.PullRequests) > 0 {
			return expectation{status: 200, envs: 1, commands: 1, installations: 1, repos: 1}
		}
		return e
	case "installation":
		switch p.Action {
		case "created", "deleted", "suspend", "unsuspend", "new_permissions_accepted":
			return expectation{status: 200, installations: 1, repos: len(p.Repositories)}
		}
		return expectation{status: 200}
	case "installation_repositories":
		return expectation{status: 200, installations: 1, repos: len(p.RepositoriesAdded)}
	case "repository":
		if installed && (p.Action == "renamed" || p.Action == "transferred") {
			return expectation{status: 200, installations: 1, repos: 1}
		}
		return expectation{status: 200}
	}
	return expectation{status: http.StatusAccepted}
}

func jsonDecoder(r io.Reader) *json.Decoder {
	d := json.NewDecoder(r)
	d.UseNumber()
	return d
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
