package app_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"github.com/stagely-dev/stagely/store"
)

// TestEnvironmentFollowsAMovedRepository: a repository keeps its id when
// it is renamed or transferred, and the reconciler reaches GitHub with the
// environment's installation, owner and name. With the old ones, the
// worker asks an installation that no longer reaches the repository, or
// names a repository that no longer exists, and a command is dropped. So
// both a command made after the move and the repository event of the move
// itself (which alone reaches a worker with no event in between: the
// reaper's destroy, a retry) leave the environment with the new names and
// installation.
func TestEnvironmentFollowsAMovedRepository(t *testing.T) {
	moves := []struct {
		name         string
		event        string // the repository event's recorded example
		installation int64
		owner, repo  string
	}{
		{"renamed", "repository.renamed.1.json", 1, "Codertocat", "Hello-Universe"},
		{"transferred to an installation on another account", "repository.transferred.1.json", 2, "Octocoders", "Hello-World"},
	}
	pr := decodeRecorded(t, "pull_request.opened.2.json") // Codertocat/Hello-World#2, installation 1
	events := []struct {
		name, event, file string
		edit              func(m map[string]any, owner, repo string)
	}{
		{"a command", "issue_comment", "issue_comment.created.1.json", func(m map[string]any, owner, repo string) {
			issue := m["issue"].(map[string]any)
			issue["number"] = 2
			issue["pull_request"] = map[string]any{"url": "https://api.github.com/repos/" + owner + "/" + repo + "/pulls/2"}
			m["comment"].(map[string]any)["body"] = "/stagely redeploy"
		}},
		{"the repository event", "repository", "", func(m map[string]any, _, _ string) {
			m["repository"].(map[string]any)["id"] = pr["repository"].(map[string]any)["id"]
		}},
	}
	for i, mv := range moves {
		for j, ev := range events {
			t.Run(mv.name+", then "+ev.name, func(t *testing.T) {
				in := newIntake(t, 0)
				opened := recorded(t, "pull_request.opened.2.json")
				if w := in.post("pull_request", fmt.Sprintf("open-%d-%d", i, j), opened, sign(opened, secret)); w.Code != http.StatusOK {
					t.Fatalf("opened: %d %s", w.Code, w.Body)
				}
				file := ev.file
				if file == "" {
					file = mv.event
				}
				m := decodeRecorded(t, file)
				m["installation"] = map[string]any{"id": mv.installation, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMQ=="}
				r := m["repository"].(map[string]any)
				r["name"], r["full_name"] = mv.repo, mv.owner+"/"+mv.repo
				r["owner"].(map[string]any)["login"] = mv.owner
				ev.edit(m, mv.owner, mv.repo)
				body := mustJSON(t, m)
				if w := in.post(ev.event, fmt.Sprintf("moved-%d-%d", i, j), body, sign(body, secret)); w.Code != http.StatusOK {
					t.Fatalf("%s: %d %s", ev.event, w.Code, w.Body)
				}

				var envs []store.Environment
				if err := in.db.NewSelect().Model(&envs).Scan(context.Background()); err != nil {
					t.Fatal(err)
				}
				if len(envs) != 1 {
					t.Fatalf("%d environments, want the pull request's one", len(envs))
				}
				if e := envs[0]; e.InstallationID != mv.installation || e.FullName() != mv.owner+"/"+mv.repo {
					t.Errorf("environment reaches %s through installation %d, want %s/%s through %d",
						e.FullName(), e.InstallationID, mv.owner, mv.repo, mv.installation)
				}
			})
		}
	}
}
