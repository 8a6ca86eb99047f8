package ghsim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRunHelp(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := Run(context.Background(), []string{"--help"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"-addr", "-app-id", "-app-slug", "-app-key-file", "-webhook-url", "-webhook-secret", "-record", "STAGELY_GHSIM_RECORD", "STAGELY_GHSIM_APP_KEY_FILE"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %s:\n%s", want, out.String())
		}
	}
	if err := Run(context.Background(), []string{"--app-id", "x"}, &out, &errOut); err == nil {
		t.Error("a bad app id was accepted")
	}
}

// TestRun starts the command, drives it through the admin HTTP API and the
// REST API, and stops it.
func TestRun(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "app.pem")
	recFile := filepath.Join(dir, "requests.jsonl")
	t.Setenv("STAGELY_GHSIM_APP_SLUG", "from-env")
	t.Setenv("STAGELY_GHSIM_RECORD", recFile)
	t.Setenv("STAGELY_GHSIM_APP_ID", "99") // the flag wins

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, []string{"--addr", "127.0.0.1:0", "--app-id", "77", "--app-key-file", keyFile}, &stdout, &stderr)
	}()
	re := regexp.MustCompile(`listening on (\S+)`)
	var base string
	for deadline := time.Now().Add(10 * time.Second); base == ""; {
		if m := re.FindStringSubmatch(stdout.String()); m != nil {
			base = m[1]
		}
		select {
		case err := <-done:
			t.Fatalf("Run ended early: %v\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not listening; stdout %q stderr %q", stdout.String(), stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}

	key, err := os.ReadFile(keyFile)
	if err != nil || !bytes.Contains(key, []byte("PRIVATE KEY")) {
		t.Fatalf("key file: %v %q", err, key)
	}

	post := func(path string, body any, into any) {
		t.Helper()
		b, _ := json.Marshal(body)
		resp, err := http.Post(base+path, "application/json", bytes.NewReader(b))
		must(t, err)
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			var e map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&e)
			t.Fatalf("POST %s: %d %v", path, resp.StatusCode, e)
		}
		if into != nil {
			must(t, json.NewDecoder(resp.Body).Decode(into))
		}
	}
	var app struct {
		ID   int64  `json:"id"`
		Slug string `json:"slug"`
	}
	resp, err := http.Get(base + "/_ghsim/app")
	must(t, err)
	must(t, json.NewDecoder(resp.Body).Decode(&app))
	resp.Body.Close()
	if app.ID != 77 || app.Slug != "from-env" {
		t.Errorf("app %+v, want id 77 (flag) and slug from-env (env)", app)
	}

	var inst Result
	post("/_ghsim/installations", map[string]any{"account": "acme"}, &inst)
	post("/_ghsim/repos", map[string]any{"owner": "acme", "name": "w", "files": map[string]string{"a": "b"}}, nil)
	var tok struct{ Token string }
	post("/_ghsim/installations/"+itoa(inst.ID)+"/token", map[string]any{}, &tok)
	req, _ := http.NewRequest("GET", base+"/repos/acme/w/contents/a", nil)
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	resp, err = http.DefaultClient.Do(req)
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("contents: %d", resp.StatusCode)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop")
	}
	if !strings.Contains(stderr.String(), "GET /repos/acme/w/contents/a 200") {
		t.Errorf("request log: %s", stderr.String())
	}

	f, err := os.Open(recFile)
	must(t, err)
	defer f.Close()
	var lines []Request
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r Request
		must(t, json.Unmarshal(sc.Bytes(), &r))
		lines = append(lines, r)
	}
	if len(lines) != 1 || lines[0].Path != "/repos/acme/w/contents/a" || lines[0].Status != 200 || !lines[0].Valid {
		t.Errorf("recorded %+v", lines)
	}
}
