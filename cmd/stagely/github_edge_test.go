package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/reconciler"
	"github.com/stagely-dev/stagely/reconciler/reconcilertest"
	"github.com/stagely-dev/stagely/store"
)

// revocable puts w's GitHub behind a switch: once revoked, every REST call
// is answered as GitHub answers an uninstalled app (401 Bad credentials).
func revocable(w *world) *atomic.Bool {
	var revoked atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if revoked.Load() && !strings.HasPrefix(r.URL.Path, "/_ghsim/") {
			rw.Header().Set("Content-Type", "application/json")
			rw.WriteHeader(http.StatusUnauthorized)
			io.WriteString(rw, `{"message":"Bad credentials","documentation_url":"https://docs.github.com/rest"}`)
			return
		}
		w.sim.ServeHTTP(rw, r)
	}))
	w.t.Cleanup(srv.Close)
	w.simURL = srv.URL + "/"
	return &revoked
}

// hook posts a signed webhook to the server, as GitHub would.
func (w *world) hook(event, payload string) {
	w.t.Helper()
	req, _ := http.NewRequest("POST", "http://"+w.addr+"/api/github/hook", strings.NewReader(payload))
	m := hmac.New(sha256.New, []byte(testSecret))
	m.Write([]byte(payload))
	req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(m.Sum(nil)))
	req.Header.Set("X-GitHub-Event", event)
	req.Header.Set("X-GitHub-Delivery", fmt.Sprintf("review-%d", time.Now().UnixNano()))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		w.t.Fatalf("%s delivery answered %d", event, resp.StatusCode)
	}
}

// The app is uninstalled while a preview is being deployed. GitHub then
// refuses every call for the installation; the machine must still be
// destroyed ("nothing may outlive Stagely's access").
func TestUninstallDuringADeployDestroysTheMachine(t *testing.T) {
	w := newWorld(t, nil)
	revoked := revocable(w)
	d := reconcilertest.New()
	d.Block()
	w.serve(d, 2)
	pr := w.openPR("feature")
	select {
	case <-d.Started():
	case <-time.After(5 * time.Second):
		t.Fatal("deploy did not start")
	}
	uninstall(t, w, revoked, d, pr.Number)
}

// uninstall removes the App while pr's preview lives: GitHub refuses
// every call from then on. The machine must still be destroyed, and the
// environment settle as destroyed.
func uninstall(t *testing.T, w *world, revoked *atomic.Bool, d *reconcilertest.Deployer, pr int) {
	t.Helper()
	revoked.Store(true)
	w.hook("installation", installationDeleted(w.environment(pr).InstallationID))
	eventually(t, 10*time.Second, func() (bool, string) {
		e := w.environment(pr)
		return len(d.Destroys()) > 0 && e.ObservedState == "destroyed", fmt.Sprintf("after the uninstall: %d Destroy calls, environment desired=%s observed=%s attempts=%d last_error=%q",
			len(d.Destroys()), e.DesiredState, e.ObservedState, e.Attempts, e.LastError)
	})
}

// installationDeleted is the installation.deleted webhook for id.
func installationDeleted(id int64) string {
	return fmt.Sprintf(`{"action":"deleted","installation":{"id":%d,"app_id":%d,"account":{"login":%q,"type":"Organization"}},"repositories":[],"sender":{"login":"octocat","type":"User"}}`,
		id, testAppID, owner)
}

// The same with a running preview: the machine is destroyed, but the
// environment must also reach "destroyed" rather than retry forever.
func TestUninstallDestroysARunningPreview(t *testing.T) {
	w := newWorld(t, nil)
	revoked := revocable(w)
	d := reconcilertest.New()
	w.serve(d, 2)
	pr := w.openPR("feature")
	w.completed(pr.SHA, "success", 5*time.Second)
	uninstall(t, w, revoked, d, pr.Number)
}

// GitHub shows a Check Run's buttons only once it completes, so a build in
// progress is stopped by commenting "/stagely destroy". It must stop the
// build and destroy the environment, not wait for the build to end.
func TestDestroyCommandStopsABuildInProgress(t *testing.T) {
	w := newWorld(t, nil)
	d := reconcilertest.New()
	d.Block() // a long build
	defer d.Unblock()
	w.serve(d, 2)
	pr := w.openPR("feature")
	select {
	case <-d.Started():
	case <-time.After(5 * time.Second):
		t.Fatal("deploy did not start")
	}
	run := w.runs(pr.SHA)[0]
	if run.Status != "in_progress" || len(run.Actions) != 0 {
		t.Fatalf("run is %s with buttons %+v, which GitHub would not show", run.Status, run.Actions)
	}
	// A reader's command does not stop the build: anyone may comment.
	w.comment(pr.Number, "bob", "read", "/stagely destroy")
	time.Sleep(time.Second)
	if r := w.runs(pr.SHA)[0]; len(d.Destroys()) != 0 || r.Status != "in_progress" {
		t.Fatalf("a reader's destroy stopped the build: %d Destroy calls, run %s", len(d.Destroys()), r.Status)
	}
	w.comment(pr.Number, "alice", "write", "/stagely destroy")
	eventually(t, 5*time.Second, func() (bool, string) {
		e := w.environment(pr.Number)
		return len(d.Destroys()) > 0, fmt.Sprintf("destroy asked during the build: 0 Destroy calls, run %s, environment desired=%s observed=%s",
			w.runs(pr.SHA)[0].Status, e.DesiredState, e.ObservedState)
	})
	eventually(t, 5*time.Second, func() (bool, string) {
		r := w.runs(pr.SHA)[0]
		return r.Status == "completed" && r.Conclusion == "cancelled" && len(r.Actions) == 0,
			"the run of the stopped build: " + describeRuns(w.runs(pr.SHA))
	})
}

// Someone comments "/stagely redeploy" and deletes the comment (or a
// moderator hides spam) before a worker reacts to it. GitHub answers 404
// for reactions on a deleted comment. That one comment must not wedge the
// pull request's preview: later pushes still deploy.
func TestADeletedCommandCommentWedgesNothing(t *testing.T) {
	w := newWorld(t, nil)
	d := reconcilertest.New()
	w.serve(d, 2)
	pr := w.openPR("feature")
	w.completed(pr.SHA, "success", 5*time.Second)
	env := w.environment(pr.Number)

	// issue_comment.created for comment 987654, already deleted on GitHub.
	w.hook("issue_comment", fmt.Sprintf(`{"action":"created",
 "issue":{"number":%d,"pull_request":{"url":"x"}},
 "comment":{"id":987654,"body":"/stagely redeploy","user":{"login":"alice","type":"User"}},
 "repository":{"id":%d,"name":%q,"full_name":"%s/%s","private":false,"owner":{"login":%q,"type":"Organization"}},
 "installation":{"id":%d},"sender":{"login":"alice","type":"User"}}`,
		pr.Number, env.RepositoryID, repoName, owner, repoName, owner, env.InstallationID))

	push := w.push(pr.Number, "v2")
	w.completed(push.SHA, "success", 10*time.Second)
	if _, err := w.sim.ClosePR(context.Background(), owner, repoName, pr.Number, true, "alice"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		return len(d.Destroys()) > 0, "the pull request was merged and its machine not destroyed"
	})
}

// /stagely status on a live preview must say where the preview is.
// TestStatusReplyForAFailedPreviewSaysWhy: /stagely status on a preview
// whose deploy failed, or whose .stagely.yml is invalid, says what went
// wrong, as the sticky comment does.
func TestStatusReplyForAFailedPreviewSaysWhy(t *testing.T) {
	for _, tt := range []struct {
		name  string
		files map[string]string
		fail  *reconciler.DeployError
		want  string
	}{
		{"a failed deploy", nil, &reconciler.DeployError{Step: "Build", Reason: "service web: exit code 3"}, "exit code 3"},
		{"an invalid .stagely.yml", map[string]string{".stagely.yml": "version: 1\npreviews: 7\n"}, nil, "previews"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, nil)
			d := reconcilertest.New()
			d.Block() // the SHA is known only once the PR exists
			w.serve(d, 2)
			spec := prSpec("broken")
			for k, v := range tt.files {
				spec.Files[k] = v
			}
			pr, err := w.sim.OpenPR(context.Background(), spec)
			if err != nil {
				t.Fatal(err)
			}
			if tt.fail != nil {
				d.FailSHA(pr.SHA, tt.fail)
			}
			d.Unblock()
			w.completed(pr.SHA, "failure", 5*time.Second)
			eventually(t, 2*time.Second, func() (bool, string) {
				e := w.environment(pr.Number)
				return e.ObservedState == store.ObservedFailed || e.ObservedState == store.ObservedInvalidConfig, "not failed yet"
			})
			w.comment(pr.Number, "alice", "write", "/stagely status")
			eventually(t, 5*time.Second, func() (bool, string) { return len(w.replies(pr.Number)) == 1, "no status reply" })
			if body := w.replies(pr.Number)[0].Body; !strings.Contains(body, tt.want) {
				t.Fatalf("status reply lacks %q:\n%s", tt.want, body)
			}
		})
	}
}

func TestStatusReplyGivesThePreviewURL(t *testing.T) {
	w := newWorld(t, nil)
	d := reconcilertest.New()
	w.serve(d, 2)
	pr := w.openPR("feature")
	w.completed(pr.SHA, "success", 5*time.Second)
	url := reconcilertest.PreviewURL(reconciler.Target{Hash: w.environment(pr.Number).Hash})
	w.comment(pr.Number, "alice", "write", "/stagely status")
	eventually(t, 5*time.Second, func() (bool, string) { return len(w.replies(pr.Number)) == 1, "no status reply" })
	if body := w.replies(pr.Number)[0].Body; !strings.Contains(body, url) {
		t.Fatalf("status reply for a ready preview lacks its URL %s:\n%s", url, body)
	}
}
