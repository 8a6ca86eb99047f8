package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/cmd/stagely/example"
	"github.com/stagely-dev/stagely/ghsim"
)

// BenchmarkTimeToPreview measures, on the local provider and the real
// Docker engine, the time from the pull_request.opened webhook to the
// first successful response on the preview URL — for a cold first deploy
// and for a redeploy after a push — beside the Docker build of the same
// project alone, run by hand in the same run. Stagely's own overhead is
// the difference.
func BenchmarkTimeToPreview(b *testing.B) {
	ctx := context.Background()
	bin, err := example.Build(ctx, b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	nonce := fmt.Sprint(time.Now().UnixNano())
	files := example.Files(bin, "first "+nonce)
	// A cold cache for both sides: the nonce makes a layer no earlier
	// build has.
	files["web/Dockerfile"] = strings.Replace(files["web/Dockerfile"], "COPY app /app\n", "COPY app /app\nLABEL nonce="+nonce+"\n", 1)

	w := newWorld(b, files)
	cfg := w.config(2)
	cfg.fleet = fleetConfig{provider: "local", dataDir: b.TempDir(), previewDomain: "preview.localhost",
		proxyAddr: "127.0.0.1:0", tunnelAddr: "127.0.0.1:0"}
	stop := w.serveConfig(cfg)
	defer stop()

	start := time.Now()
	pr, err := w.sim.OpenPR(ctx, ghsim.PRSpec{Owner: owner, Repo: repoName, Head: "bench", Files: map[string]string{"backend/message.txt": "opened " + nonce}})
	if err != nil {
		b.Fatal(err)
	}
	run := w.completed(pr.SHA, "success", 5*time.Minute)
	eventually(b, time.Minute, func() (bool, string) {
		code, body := get(b, run.DetailsURL)
		return code == 200 && strings.Contains(body, "opened "+nonce), body
	})
	cold := time.Since(start)

	start = time.Now()
	push, err := w.sim.PushToPR(ctx, ghsim.PushSpec{Owner: owner, Repo: repoName, Number: pr.Number, Files: map[string]string{"backend/message.txt": "pushed " + nonce}})
	if err != nil {
		b.Fatal(err)
	}
	w.completed(push.SHA, "success", 5*time.Minute)
	eventually(b, time.Minute, func() (bool, string) {
		code, body := get(b, run.DetailsURL)
		return code == 200 && strings.Contains(body, "pushed "+nonce), body
	})
	warm := time.Since(start)
	if _, err := w.sim.ClosePR(ctx, owner, repoName, pr.Number, false, "octocat"); err != nil {
		b.Fatal(err)
	}

	// The baseline: `docker compose build` of the same tree by hand, cold
	// (a new nonce) and after the same one-line change.
	dir := b.TempDir()
	nonce2 := nonce + "b"
	files["web/Dockerfile"] = strings.Replace(files["web/Dockerfile"], nonce, nonce2, 1)
	files["backend/message.txt"] = "opened " + nonce2
	writeTree(b, dir, files)
	project := "stagely-bench-" + nonce
	defer exec.Command("docker", "compose", "-p", project, "down", "-v", "--rmi", "local").Run()
	buildCold := timeBuild(b, dir, project)
	writeTree(b, dir, map[string]string{"backend/message.txt": "pushed " + nonce2})
	buildWarm := timeBuild(b, dir, project)

	for _, r := range []struct {
		name    string
		v, base time.Duration
	}{
		{"time_to_preview_first_deploy", cold, buildCold},
		{"time_to_preview_redeploy", warm, buildWarm},
	} {
		// Name first: `make bench` keeps the lines that start with it.
		line, _ := json.Marshal(struct {
			Name          string  `json:"name"`
			Value         float64 `json:"value"`
			Unit          string  `json:"unit"`
			Baseline      float64 `json:"baseline"`
			Ratio         float64 `json:"ratio"`
			OverheadS     float64 `json:"overhead_s"`
			GoalOverheadS float64 `json:"goal_overhead_s"`
			GoalMet       bool    `json:"goal_met"`
		}{r.name, r.v.Seconds(), "s", r.base.Seconds(), r.v.Seconds() / r.base.Seconds(), (r.v - r.base).Seconds(), 3, r.v-r.base < 3*time.Second})
		fmt.Println(string(line))
		b.ReportMetric(r.v.Seconds(), r.name+"_s")
	}
}

func writeTree(b *testing.B, dir string, files map[string]string) {
	for p, c := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			b.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(c, "\x7fELF") {
			mode = 0o755
		}
		if err := os.WriteFile(full, []byte(c), mode); err != nil {
			b.Fatal(err)
		}
	}
}

func timeBuild(b *testing.B, dir, project string) time.Duration {
	start := time.Now()
	cmd := exec.Command("docker", "compose", "-p", project, "build")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("docker compose build: %v\n%s", err, out)
	}
	return time.Since(start)
}
