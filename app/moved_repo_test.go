package app_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"github.com/stagely-dev/stagely/store"
)

// TestCommandAfterRepositoryMovedUsesNewNames: a repository keeps its id
// when it is renamed or transferred, and the reconciler reaches GitHub with
// the environment's installation, owner and name. A command on a preview
// made before the move must leave the environment with the names (and the
// installation) the command's own event carries: with the old ones, the
// worker asks an installation that no longer reaches the repository, or
// names a repository that no longer exists, and the command is dropped.
func TestCommandAfterRepositoryMovedUsesNewNames(t *testing.T) {
	cases := []struct {
		name         string
		installation int64
		owner, repo  string
	}{
		{"renamed", 1, "Codertocat", "Hello-Universe"},
		{"transferred to an installation on another account", 2, "Octocoders", "Hello-World"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := newIntake(t, 0)
			opened := recorded(t, "pull_request.opened.2.json") // Codertocat/Hello-World#2, installation 1
			if w := in.post("pull_request", fmt.Sprintf("open-%d", i), opened, sign(opened, secret)); w.Code != http.StatusOK {
				t.Fatalf("opened: %d %s", w.Code, w.Body)
			}

			m := decodeRecorded(t, "issue_comment.created.1.json")
			m["installation"] = map[string]any{"id": c.installation, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMQ=="}
			r := m["repository"].(map[string]any)
			r["name"], r["full_name"] = c.repo, c.owner+"/"+c.repo
			r["owner"].(map[string]any)["login"] = c.owner
			issue := m["issue"].(map[string]any)
			issue["number"] = 2
			issue["pull_request"] = map[string]any{"url": "https://api.github.com/repos/" + c.owner + "/" + c.repo + "/pulls/2"}
			m["comment"].(map[string]any)["body"] = "/stagely redeploy"
			body := mustJSON(t, m)
			if w := in.post("issue_comment", fmt.Sprintf("cmd-%d", i), body, sign(body, secret)); w.Code != http.StatusOK {
				t.Fatalf("comment: %d %s", w.Code, w.Body)
			}

			var envs []store.Environment
			if err := in.db.NewSelect().Model(&envs).Scan(context.Background()); err != nil {
				t.Fatal(err)
			}
			if len(envs) != 1 {
				t.Fatalf("%d environments, want the pull request's one", len(envs))
			}
			e := envs[0]
			if e.InstallationID != c.installation || e.FullName() != c.owner+"/"+c.repo {
				t.Errorf("environment reaches %s through installation %d, want %s/%s through %d",
					e.FullName(), e.InstallationID, c.owner, c.repo, c.installation)
			}
		})
	}
}

// TestRepositoryRenamedOrTransferredIsFollowed: the repository event of a
// rename or a transfer moves the environments of its open pull requests
// to the new names and installation, so that a worker with no event in
// between (the reaper's destroy, a retry) still reaches the repository.
func TestRepositoryRenamedOrTransferredIsFollowed(t *testing.T) {
	cases := []struct {
		file         string
		installation int64
		owner, repo  string
	}{
		{"repository.renamed.1.json", 1, "Codertocat", "Hello-Universe"},
		{"repository.transferred.1.json", 2, "Octocoders", "Hello-World"},
	}
	for i, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			in := newIntake(t, 0)
			opened := recorded(t, "pull_request.opened.2.json") // Codertocat/Hello-World#2, installation 1
			if w := in.post("pull_request", fmt.Sprintf("open-%d", i), opened, sign(opened, secret)); w.Code != http.StatusOK {
				t.Fatalf("opened: %d %s", w.Code, w.Body)
			}
			pr := decodeRecorded(t, "pull_request.opened.2.json")
			m := decodeRecorded(t, c.file)
			m["installation"] = map[string]any{"id": c.installation, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMQ=="}
			r := m["repository"].(map[string]any)
			r["id"] = pr["repository"].(map[string]any)["id"]
			r["name"], r["full_name"] = c.repo, c.owner+"/"+c.repo
			r["owner"].(map[string]any)["login"] = c.owner
			body := mustJSON(t, m)
			if w := in.post("repository", fmt.Sprintf("moved-%d", i), body, sign(body, secret)); w.Code != http.StatusOK {
				t.Fatalf("repository event: %d %s", w.Code, w.Body)
			}
			var envs []store.Environment
			if err := in.db.NewSelect().Model(&envs).Scan(context.Background()); err != nil {
				t.Fatal(err)
			}
			if len(envs) != 1 {
				t.Fatalf("%d environments, want the pull request's one", len(envs))
			}
			if e := envs[0]; e.InstallationID != c.installation || e.FullName() != c.owner+"/"+c.repo {
				t.Errorf("environment reaches %s through installation %d, want %s/%s through %d",
					e.FullName(), e.InstallationID, c.owner, c.repo, c.installation)
			}
		})
	}
}
