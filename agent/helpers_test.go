package agent_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/volume"

	"github.com/stagely-dev/stagely/agent"
	"github.com/stagely-dev/stagely/agent/containers"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// appBinary is the static test app, built once by TestMain.
var appBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "stageapp-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	appBinary = filepath.Join(dir, "app")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", appBinary, "./testdata/stageapp")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build the test app: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// connect reaches the Docker engine or fails the test: these tests prove
// the agent against a real engine and must not pass without one.
func connect(tb testing.TB) *containers.Docker {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := containers.Connect(ctx)
	if err != nil {
		tb.Fatalf("these tests need a running Docker engine (scripts/services.sh starts one): %v", err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}

func newEngine(tb testing.TB, d *containers.Docker) *agent.Engine {
	tb.Helper()
	e, err := agent.New(context.Background(), agent.Config{WorkDir: filepath.Join(tb.TempDir(), "work"), Docker: d})
	if err != nil {
		tb.Fatal(err)
	}
	return e
}

// uniqueEnv returns a fresh environment id and removes whatever of its
// project is left when the test ends.
func uniqueEnv(tb testing.TB, d *containers.Docker, prefix string) string {
	tb.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	env := prefix + "-" + hex.EncodeToString(b)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := d.RemoveAll(ctx, agent.ProjectName(env)); err != nil {
			tb.Logf("cleanup: %v", err)
		}
	})
	return env
}

// appOptions vary the test app's compose file.
type appOptions struct {
	extraWeb string // more lines under services.web, indented 4 spaces
	ports    bool   // publish web's port, as a developer's file would
	nonce    string // a first build step that makes the build cache cold
}

const composeTemplate = `services:
  web:
    build: ./web
    command: ["-role=web", "-listen=:8080", "-backend=http://backend:9000/"]
%s    depends_on:
      backend:
        condition: service_healthy
%s  backend:
    build: ./backend
    command: ["-role=backend", "-listen=:9000"]
    healthcheck:
      test: ["CMD", "/app", "-probe=http://127.0.0.1:9000/healthz"]
      interval: 500ms
      timeout: 2s
      retries: 60
    volumes:
      - data:/data
volumes:
  data: {}
`

// writeApp writes the two-service app into dir: each service's build
// context holds the static binary and a FROM-scratch Dockerfile; the
// backend answers with message.
func writeApp(tb testing.TB, dir, message string, o appOptions) {
	tb.Helper()
	bin, err := os.ReadFile(appBinary)
	if err != nil {
		tb.Fatal(err)
	}
	ports := ""
	if o.ports {
		ports = "    ports:\n      - \"8080\"\n"
	}
	first := ""
	if o.nonce != "" {
		first = "COPY nonce.txt /nonce.txt\n"
	}
	files := map[string]string{
		"compose.yaml":          fmt.Sprintf(composeTemplate, ports, o.extraWeb),
		"web/Dockerfile":        "FROM scratch\n" + first + "COPY app /app\nENTRYPOINT [\"/app\"]\n",
		"web/app":               string(bin),
		"backend/Dockerfile":    "FROM scratch\n" + first + "COPY app /app\nCOPY message.txt /message.txt\nENTRYPOINT [\"/app\"]\n",
		"backend/app":           string(bin),
		"backend/message.txt":   message + "\n",
		"README.md":             "# stageapp\n",
		"web/static/banner.txt": "banner of " + message,
	}
	if o.nonce != "" {
		files["web/nonce.txt"] = o.nonce
		files["backend/nonce.txt"] = o.nonce
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			tb.Fatal(err)
		}
		mode := fs.FileMode(0o644)
		if strings.HasSuffix(name, "/app") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			tb.Fatal(err)
		}
	}
}

// tarball packs dir the way GitHub's tarball endpoint does: a
// pax_global_header, one top-level directory, every file stamped with
// the commit's time.
func tarball(tb testing.TB, dir string, extra ...*tar.Header) []byte {
	tb.Helper()
	return tarballAt(tb, dir, time.Now().Truncate(time.Second), extra...)
}

// tarballAt is tarball for a commit made at the given time.
func tarballAt(tb testing.TB, dir string, commit time.Time, extra ...*tar.Header) []byte {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	top := "stagely-dev-stageapp-0123abc/"
	must := func(err error) {
		if err != nil {
			tb.Fatal(err)
		}
	}
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeXGlobalHeader, PAXRecords: map[string]string{"comment": "0123abc"}, Format: tar.FormatPAX}))
	must(tw.WriteHeader(&tar.Header{Name: top, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: commit}))
	must(filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := de.Info()
		if err != nil {
			return err
		}
		if de.IsDir() {
			return tw.WriteHeader(&tar.Header{Name: top + rel + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: commit})
		}
		if err := tw.WriteHeader(&tar.Header{Name: top + rel, Typeflag: tar.TypeReg, Mode: int64(info.Mode().Perm()), Size: info.Size(), ModTime: commit}); err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	}))
	for _, h := range extra {
		h.Name = top + h.Name
		must(tw.WriteHeader(h))
	}
	must(tw.Close())
	return buf.Bytes()
}

func deployment(env string, gen int64, secrets protocol.Secrets) protocol.Deployment {
	return protocol.Deployment{
		EnvironmentID: env,
		Generation:    gen,
		Action:        protocol.ActionDeploy,
		SHA:           fmt.Sprintf("%040d", gen),
		ComposeFiles:  []string{"compose.yaml"},
		Previews:      []protocol.Preview{{Name: "web", Service: "web", Port: 8080}},
		Health: protocol.Health{Path: "/", ExpectStatus: 200,
			Timeout: protocol.Duration(90 * time.Second), Interval: protocol.Duration(100 * time.Millisecond)},
		Secrets: secrets,
	}
}

// get fetches http://addr/ (or the path given) and returns the body.
func get(tb testing.TB, addr string, path ...string) string {
	tb.Helper()
	p := "/"
	if len(path) > 0 {
		p = path[0]
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addr + p)
	if err != nil {
		tb.Fatalf("GET %s: %v", addr, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("GET %s: %s: %s", addr, resp.Status, b)
	}
	return string(b)
}

func projectFilter(project string) filters.Args {
	return filters.NewArgs(filters.Arg("label", containers.LabelProject+"="+project))
}

func volumeByName(project string) volume.ListOptions {
	return volume.ListOptions{Filters: filters.NewArgs(filters.Arg("name", project+"_"))}
}
