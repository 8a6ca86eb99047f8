package agent_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/stagely-dev/stagely/agent"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// Containers that bind-mount part of the repository keep the directory
// they mounted when they started. A redeploy that fails must leave them
// their files, the next deploy after it too, until a deploy succeeds; and
// failed pushes must not pile trees up on the disk.
func TestAFailedRedeployLeavesTheRunningContainersTheirMountedFiles(t *testing.T) {
	ctx := context.Background()
	d := connect(t)
	work := filepath.Join(t.TempDir(), "work")
	e, err := agent.New(ctx, agent.Config{WorkDir: work, Docker: d})
	if err != nil {
		t.Fatal(err)
	}
	env := uniqueEnv(t, d, "keep")
	dir := t.TempDir()
	const mount = "    volumes: [\"./web/static:/static:ro\"]\n"
	writeApp(t, dir, "v1", appOptions{extraWeb: mount})

	write := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A COPY of a file that is not there fails backend's build, before
	// Compose touches any container.
	breakBuild := func(broken bool) {
		t.Helper()
		df := "FROM scratch\nCOPY app /app\nCOPY message.txt /message.txt\nENTRYPOINT [\"/app\"]\n"
		if broken {
			df = "FROM scratch\nCOPY no-such-file /x\n" + df[len("FROM scratch\n"):]
		}
		write("backend/Dockerfile", df)
	}
	deploy := func(gen int64) error {
		t.Helper()
		_, err := e.Deploy(ctx, deployment(env, gen, nil), agent.Source{Body: bytes.NewReader(tarball(t, dir)), StripTopLevel: true}, nil)
		return err
	}
	failsAtUp := func(gen int64) {
		t.Helper()
		err := deploy(gen)
		var se *agent.StepError
		if !errors.As(err, &se) || se.Step != agent.StepUp {
			t.Fatalf("deploy %d: err = %v, want a failure of step %s", gen, err, agent.StepUp)
		}
	}
	// banner is what web serves from its bind mount now, or the failure.
	banner := func() string {
		t.Helper()
		addr, err := e.Address(ctx, env, "web", 8080)
		if err != nil {
			t.Fatal(err)
		}
		// A container just restarted may not listen yet.
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addr + "/banner")
		for deadline := time.Now().Add(30 * time.Second); err != nil && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
			resp, err = (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addr + "/banner")
		}
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return resp.Status + ": " + string(b)
		}
		return string(b)
	}
	// trees counts the repository trees the environment keeps on disk.
	trees := func() int {
		t.Helper()
		n := 0
		err := filepath.WalkDir(filepath.Join(work, env), func(p string, de fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if de.Name() == "compose.yaml" {
				n++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	webID := func() string {
		t.Helper()
		list, err := d.API().ContainerList(ctx, container.ListOptions{Filters: projectFilter(agent.ProjectName(env))})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range list {
			if c.Labels["com.docker.compose.service"] == "web" {
				return c.ID
			}
		}
		t.Fatal("no running web container")
		return ""
	}

	if err := deploy(1); err != nil {
		t.Fatal(err)
	}
	if got := banner(); got != "banner of v1" {
		t.Fatalf("after the first deploy web serves %q", got)
	}

	write("web/static/banner.txt", "banner of v2")
	breakBuild(true)
	failsAtUp(2)
	if got := banner(); got != "banner of v1" {
		t.Fatalf("after a failed redeploy web serves %q, want the last good deploy's banner", got)
	}

	// The next deploy after a failed one must not take the files either.
	write("web/static/banner.txt", "banner of v3")
	failsAtUp(3)
	if got := banner(); got != "banner of v1" {
		t.Fatalf("after a second failed redeploy web serves %q, want the last good deploy's banner", got)
	}
	if n := trees(); n > 2 {
		t.Errorf("after two failed pushes the environment keeps %d trees", n)
	}

	// A restart (a crash, a reboot of the machine) mounts the path afresh:
	// it must find the last good deploy's files there, not a failed one's.
	stop := 1
	if err := d.API().ContainerRestart(ctx, webID(), container.StopOptions{Timeout: &stop}); err != nil {
		t.Fatal(err)
	}
	if got := banner(); got != "banner of v1" {
		t.Fatalf("after a restart web serves %q, want the last good deploy's banner", got)
	}

	// A deploy that fails after Compose recreated web (its environment
	// changed) and started it: a job that exits with code 2, an unknown
	// flag, fails compose up. web runs with the new tree and must keep it
	// through the next failed deploy.
	before := webID()
	writeApp(t, dir, "v1", appOptions{extraWeb: mount +
		"    environment: {ROUND: \"4\"}\n  job:\n    build: ./backend\n    command: [\"-no-such-flag\"]\n"})
	write("web/static/banner.txt", "banner of v4")
	failsAtUp(4)
	if webID() == before {
		t.Fatal("the failed deploy did not recreate web; the test no longer tests what it says")
	}
	if got := banner(); got != "banner of v4" {
		t.Fatalf("web, recreated by a deploy that failed, serves %q, want its own tree's banner", got)
	}
	write("web/static/banner.txt", "banner of v5")
	breakBuild(true)
	failsAtUp(5)
	if got := banner(); got != "banner of v4" {
		t.Fatalf("after the next failed deploy web serves %q, want the banner of the tree it mounted", got)
	}

	// A deploy that succeeds shows the new tree and keeps no other.
	writeApp(t, dir, "v1", appOptions{extraWeb: mount})
	write("web/static/banner.txt", "banner of v6")
	if err := deploy(6); err != nil {
		t.Fatal(err)
	}
	if got := banner(); got != "banner of v6" {
		t.Fatalf("after a successful deploy web serves %q", got)
	}
	if n := trees(); n != 1 {
		t.Errorf("after a successful deploy the environment keeps %d trees, want 1", n)
	}

	// A failed push that adds a service (of an image the engine has, so
	// nothing is pulled), then the pull request closes: Compose must
	// accept the files the failed deploy left.
	writeApp(t, dir, "v1", appOptions{extraWeb: mount + "  extra:\n    image: " + agent.ProjectName(env) + "-backend\n"})
	breakBuild(true)
	failsAtUp(7)
	rec := &agent.Recorder{}
	if err := e.Destroy(ctx, protocol.Deployment{EnvironmentID: env, Generation: 8, Action: protocol.ActionDestroy}, rec); err != nil {
		t.Fatal(err)
	}
	for _, s := range rec.Steps() {
		if s.State == protocol.StepSucceeded && strings.Contains(s.Message, "compose down failed") {
			t.Errorf("destroy: %s", s.Message)
		}
	}
}
