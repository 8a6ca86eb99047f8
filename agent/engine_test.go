package agent_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"

	"github.com/stagely-dev/stagely/agent"
	"github.com/stagely-dev/stagely/agent/compose"
	"github.com/stagely-dev/stagely/agent/containers"
	"github.com/stagely-dev/stagely/agent/protocol"
	"github.com/stagely-dev/stagely/agent/source"
)

func serviceContainer(t *testing.T, cs []containers.Container, service string) containers.Container {
	t.Helper()
	for _, c := range cs {
		if c.Service == service {
			return c
		}
	}
	t.Fatalf("no container of service %s in %+v", service, cs)
	return containers.Container{}
}

func assertStepsSucceeded(t *testing.T, rec *agent.Recorder, names ...string) {
	t.Helper()
	done := map[string]protocol.StepReport{}
	for _, s := range rec.Steps() {
		if s.State != protocol.StepRunning {
			done[s.Name] = s
		}
	}
	for _, n := range names {
		s, ok := done[n]
		if !ok || s.State != protocol.StepSucceeded || s.Finished.Before(s.Started) {
			t.Fatalf("step %s: %+v", n, s)
		}
	}
}

func TestDeployServesOnTheComposeNetworkRedeploysInPlaceAndDestroysEverything(t *testing.T) {
	ctx := context.Background()
	d := connect(t)
	e := newEngine(t, d)
	env := uniqueEnv(t, d, "life")
	project := agent.ProjectName(env)
	dir := t.TempDir()
	// The developer's compose file publishes web's port; the agent must not.
	// web also bind-mounts a directory of the repository.
	writeApp(t, dir, "hello from v1", appOptions{ports: true, extraWeb: "    volumes: [\"./web/static:/static:ro\"]\n"})

	var first agent.Result
	t.Run("first deploy answers through the compose network", func(t *testing.T) {
		rec := &agent.Recorder{}
		res, err := e.Deploy(ctx, deployment(env, 1, nil), agent.Source{Body: bytes.NewReader(tarball(t, dir)), StripTopLevel: true}, rec)
		if err != nil {
			t.Fatal(err)
		}
		first = res
		assertStepsSucceeded(t, rec, agent.StepSource, agent.StepCompose, agent.StepUp, agent.StepHealth)
		if res.Project != project || len(res.Endpoints) != 1 {
			t.Fatalf("result = %+v", res)
		}
		if got := get(t, res.Endpoints[0].Addr); got != "web: hello from v1" {
			t.Fatalf("web answered %q", got)
		}
		if got := get(t, res.Endpoints[0].Addr, "/banner"); got != "banner of hello from v1" {
			t.Fatalf("web's bind-mounted banner is %q", got)
		}
		if addr, err := e.Address(ctx, env, "web", 8080); err != nil || addr != res.Endpoints[0].Addr {
			t.Fatalf("Address = %q, %v; the deploy said %q", addr, err, res.Endpoints[0].Addr)
		}
		if len(res.Containers) != 2 {
			t.Fatalf("containers = %+v", res.Containers)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("no port is published on the host", func(t *testing.T) {
		list, err := d.API().ContainerList(ctx, container.ListOptions{All: true, Filters: projectFilter(project)})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range list {
			in, err := d.API().ContainerInspect(ctx, s.ID)
			if err != nil {
				t.Fatal(err)
			}
			if len(in.HostConfig.PortBindings) != 0 {
				t.Errorf("%s has port bindings %v", in.Name, in.HostConfig.PortBindings)
			}
			for port, b := range in.NetworkSettings.Ports {
				if len(b) != 0 {
					t.Errorf("%s publishes %s on %v", in.Name, port, b)
				}
			}
			if in.Config.Labels[compose.LabelEnvironment] != env || in.Config.Labels[compose.LabelManaged] != "true" {
				t.Errorf("%s labels = %v", in.Name, in.Config.Labels)
			}
		}
	})

	t.Run("a changed source redeploys in place", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(dir, "backend", "message.txt"), []byte("hello from v2\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "web", "static", "banner.txt"), []byte("banner of v2"), 0o644); err != nil {
			t.Fatal(err)
		}
		rec := &agent.Recorder{}
		res, err := e.Deploy(ctx, deployment(env, 2, nil), agent.Source{Body: bytes.NewReader(tarball(t, dir)), StripTopLevel: true}, rec)
		if err != nil {
			t.Fatal(err)
		}
		assertStepsSucceeded(t, rec, agent.StepSource, agent.StepCompose, agent.StepUp, agent.StepHealth)
		if got := get(t, res.Endpoints[0].Addr); got != "web: hello from v2" {
			t.Fatalf("web answered %q after the redeploy", got)
		}
		if got := get(t, res.Endpoints[0].Addr, "/banner"); got != "banner of v2" {
			t.Fatalf("web's bind mount still shows %q after the redeploy", got)
		}
		// Same project: the unchanged web service kept its container, the
		// changed backend got a new one.
		if a, b := serviceContainer(t, first.Containers, "web").ID, serviceContainer(t, res.Containers, "web").ID; a != b {
			t.Errorf("web was recreated (%.12s -> %.12s) though nothing of it changed", a, b)
		}
		if a, b := serviceContainer(t, first.Containers, "backend").ID, serviceContainer(t, res.Containers, "backend").ID; a == b {
			t.Error("backend kept its container though its source changed")
		}
		// backend's previous image is no one's now: a machine that takes
		// many pushes must not keep one per push until the destroy.
		f := projectFilter(project)
		f.Add("dangling", "true")
		if left, err := d.API().ImageList(ctx, image.ListOptions{Filters: f}); err != nil || len(left) != 0 {
			t.Errorf("after the redeploy, %d images of the project are dangling (%v)", len(left), err)
		}
	})

	t.Run("a change to a bind-mounted file alone reaches the running container", func(t *testing.T) {
		// Compose sees no change of web's config and keeps the container;
		// the agent must still show it the new tree.
		if err := os.WriteFile(filepath.Join(dir, "web", "static", "banner.txt"), []byte("banner of v3"), 0o644); err != nil {
			t.Fatal(err)
		}
		res, err := e.Deploy(ctx, deployment(env, 3, nil), agent.Source{Body: bytes.NewReader(tarball(t, dir)), StripTopLevel: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := get(t, res.Endpoints[0].Addr, "/banner"); got != "banner of v3" {
			t.Fatalf("web's bind mount shows %q, want the new tree's", got)
		}
		if a, b := serviceContainer(t, first.Containers, "web").ID, serviceContainer(t, res.Containers, "web").ID; a != b {
			t.Errorf("web was recreated (%.12s -> %.12s), not restarted", a, b)
		}
	})

	t.Run("destroy leaves nothing of the project", func(t *testing.T) {
		rec := &agent.Recorder{}
		destroy := protocol.Deployment{EnvironmentID: env, Generation: 4, Action: protocol.ActionDestroy}
		if err := e.Destroy(ctx, destroy, rec); err != nil {
			t.Fatal(err)
		}
		assertStepsSucceeded(t, rec, agent.StepDown)
		left, err := d.Leftovers(ctx, project)
		if err != nil {
			t.Fatal(err)
		}
		if !left.Empty() {
			t.Fatalf("left on the engine: %s", left)
		}
		// Also by name, in case a label went missing.
		imgs, err := d.API().ImageList(ctx, image.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range imgs {
			for _, tag := range i.RepoTags {
				if strings.HasPrefix(tag, project+"-") {
					t.Errorf("image %s is left", tag)
				}
			}
		}
		vols, err := d.API().VolumeList(ctx, volumeByName(project))
		if err != nil {
			t.Fatal(err)
		}
		if len(vols.Volumes) != 0 {
			t.Errorf("volumes left: %v", vols.Volumes[0].Name)
		}
	})
}

func TestDeployRefusesUnsafeSourcesAndComposeFiles(t *testing.T) {
	ctx := context.Background()
	d := connect(t)
	e := newEngine(t, d)
	tests := []struct {
		name      string
		extra     []*tar.Header // appended inside the top-level directory
		extraWeb  string
		wantIs    error
		wantStep  string
		wantWords []string
	}{
		{name: "tarball with ../", extra: []*tar.Header{{Name: "../../etc/cron.d/evil", Typeflag: tar.TypeReg, Mode: 0o644}},
			wantIs: source.ErrUnsafePath, wantStep: agent.StepSource,
			wantWords: []string{`"stagely-dev-stageapp-0123abc/../../etc/cron.d/evil"`, `".."`}},
		{name: "tarball with an escaping symlink", extra: []*tar.Header{{Name: "web/hosts", Typeflag: tar.TypeSymlink, Linkname: "/etc/hosts"}},
			wantIs: source.ErrEscapingLink, wantStep: agent.StepSource,
			wantWords: []string{`"stagely-dev-stageapp-0123abc/web/hosts"`, "/etc/hosts"}},
		{name: "tarball with an escaping relative symlink", extra: []*tar.Header{{Name: "web/up", Typeflag: tar.TypeSymlink, Linkname: "../../.."}},
			wantIs: source.ErrEscapingLink, wantStep: agent.StepSource, wantWords: []string{"web/up"}},
		{name: "compose file with privileged: true", extraWeb: "    privileged: true\n",
			wantStep: agent.StepCompose, wantWords: []string{"compose.yaml:", `service "web"`, "privileged: true", "allow_privileged"}},
		{name: "compose file binding the Docker socket", extraWeb: "    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n",
			wantStep: agent.StepCompose, wantWords: []string{"compose.yaml:", `service "web"`, "volumes", "Docker socket"}},
		{name: "compose file with host network", extraWeb: "    network_mode: host\n",
			wantStep: agent.StepCompose, wantWords: []string{"compose.yaml:", `service "web"`, "network_mode: host"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := uniqueEnv(t, d, "refuse")
			dir := t.TempDir()
			writeApp(t, dir, "never served", appOptions{extraWeb: tt.extraWeb})
			rec := &agent.Recorder{}
			_, err := e.Deploy(ctx, deployment(env, 1, nil), agent.Source{Body: bytes.NewReader(tarball(t, dir, tt.extra...)), StripTopLevel: true}, rec)
			if err == nil {
				t.Fatal("deployed")
			}
			var se *agent.StepError
			if !errors.As(err, &se) || se.Step != tt.wantStep || se.Environment != env {
				t.Fatalf("err = %v, want a failure of step %s of %s", err, tt.wantStep, env)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Fatalf("err = %v, want %v", err, tt.wantIs)
			}
			var pe *compose.PolicyError
			if tt.wantStep == agent.StepCompose && !errors.As(err, &pe) {
				t.Fatalf("err = %v, want a *compose.PolicyError", err)
			}
			var failed protocol.StepReport
			for _, s := range rec.Steps() {
				if s.State == protocol.StepFailed {
					failed = s
				}
			}
			for _, w := range tt.wantWords {
				if !strings.Contains(err.Error(), w) || !strings.Contains(failed.Message, w) {
					t.Errorf("error %q / reported %q do not say %q", err, failed.Message, w)
				}
			}
			left, err := d.Leftovers(ctx, agent.ProjectName(env))
			if err != nil {
				t.Fatal(err)
			}
			if !left.Empty() {
				t.Fatalf("a refused deploy created %s", left)
			}
		})
	}
}

func TestNewSaysWhenTheComposePluginIsMissing(t *testing.T) {
	d := connect(t)
	_, err := agent.New(context.Background(), agent.Config{WorkDir: t.TempDir(), Docker: d,
		Compose: compose.CLI{Command: []string{"docker", "stagely-no-such-plugin"}}})
	if !errors.Is(err, compose.ErrPluginMissing) || !strings.Contains(err.Error(), "docker compose v2 plugin is not installed") {
		t.Fatalf("err = %v", err)
	}
}

func TestFollowLogsRefusesAnEnvironmentItDidNotDeploy(t *testing.T) {
	d := connect(t)
	e := newEngine(t, d)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.FollowLogs(ctx, "never-deployed", &agent.Recorder{}); !errors.Is(err, agent.ErrNotDeployed) {
		t.Fatalf("err = %v", err)
	}
}
