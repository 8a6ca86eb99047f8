package local

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/provisioner"
)

// helperVar makes the test binary play a machine instead of running the
// tests: the value says how it behaves.
const helperVar = "STAGELY_LOCAL_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperVar); mode != "" {
		helper(mode)
		return
	}
	os.Exit(m.Run())
}

// seen is what a helper machine reports about how it was started.
type seen struct {
	Env       map[string]string
	TokenMode string
	Token     string
	Dir       string
	ChildPID  int
}

// helper plays a machine. "agent" writes what it saw to its state
// directory, starts a child, and runs until SIGTERM; "stubborn" ignores
// SIGTERM; "exit" exits at once; "child" sleeps.
func helper(mode string) {
	switch mode {
	case "exit":
		os.Exit(3)
	case "child":
		time.Sleep(time.Hour)
		os.Exit(0)
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	if mode == "stubborn" {
		signal.Ignore(syscall.SIGTERM)
	}
	child := exec.Command(os.Args[0])
	child.Env = append(os.Environ(), helperVar+"=child")
	if err := child.Start(); err != nil {
		panic(err)
	}
	s := seen{Env: map[string]string{}, ChildPID: child.Process.Pid}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		s.Env[k] = v
	}
	s.Dir, _ = os.Getwd()
	if fi, err := os.Stat(s.Env["STAGELY_BOOTSTRAP_TOKEN_FILE"]); err == nil {
		s.TokenMode = fi.Mode().Perm().String()
	}
	tok, _ := os.ReadFile(s.Env["STAGELY_BOOTSTRAP_TOKEN_FILE"])
	s.Token = string(tok)
	b, _ := json.Marshal(s)
	out := filepath.Join(s.Env["STAGELY_STATE_DIR"], "seen.json")
	os.WriteFile(out+".tmp", b, 0o600)
	os.Rename(out+".tmp", out)
	<-term
	os.Exit(0)
}

func renderUserData(t *testing.T, env int64) string {
	t.Helper()
	ud, err := provisioner.RenderCloudInit(provisioner.CloudInit{
		EnvironmentID:  env,
		ServerURL:      "http://127.0.0.1:8080",
		ProxyAddr:      "127.0.0.1:7443",
		AgentURL:       "http://127.0.0.1:8080/agent/stagely",
		AgentSHA256:    strings.Repeat("0", 64),
		BootstrapToken: "bootstrap-token-for-env-" + strconv.FormatInt(env, 10),
	})
	if err != nil {
		t.Fatal(err)
	}
	return ud
}

func newProvider(t *testing.T, dir, mode string) *Provider {
	t.Helper()
	p, err := New(Config{
		Dir:       dir,
		Command:   []string{os.Args[0], "-test.run=^$"},
		Env:       []string{helperVar + "=" + mode},
		StopGrace: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func spec(t *testing.T, env, attempt int64) provisioner.Spec {
	return provisioner.Spec{EnvironmentID: env, Key: provisioner.Key(env, attempt), UserData: renderUserData(t, env)}
}

// waitSeen waits for the helper to report how it was started.
func waitSeen(t *testing.T, dir, id string) seen {
	t.Helper()
	path := filepath.Join(dir, id, stateDir, "seen.json")
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			var s seen
			if err := json.Unmarshal(b, &s); err != nil {
				t.Fatal(err)
			}
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("the machine never reported: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

func TestMachineStartsLikeCloudInitWouldAndIsDestroyedWithItsChildren(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	t.Setenv("STAGELY_DATABASE_URL", "postgres://secret@db") // the server's, never the machine's
	p := newProvider(t, dir, "agent")
	s := spec(t, 7, 1)
	m, err := provisioner.Launch(ctx, p, s, provisioner.Wait{Timeout: 10 * time.Second, Interval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Destroy(ctx, m.ID) })
	if m.ID != "stagely-env7-1" || m.EnvironmentID != 7 || m.Key != "env7-1" || m.State != provisioner.StateRunning {
		t.Errorf("Launch = %+v", m)
	}
	got := waitSeen(t, dir, m.ID)
	machineDir := filepath.Join(dir, m.ID)
	want := map[string]string{
		"STAGELY_ENVIRONMENT_ID":       "7",
		"STAGELY_SERVER_URL":           "http://127.0.0.1:8080",
		"STAGELY_PROXY_ADDR":           "127.0.0.1:7443",
		"STAGELY_BOOTSTRAP_TOKEN_FILE": filepath.Join(machineDir, tokenFile),
		"STAGELY_STATE_DIR":            filepath.Join(machineDir, stateDir),
	}
	for k, v := range want {
		if got.Env[k] != v {
			t.Errorf("%s = %q, want %q", k, got.Env[k], v)
		}
	}
	if _, leaked := got.Env["STAGELY_DATABASE_URL"]; leaked {
		t.Error("the machine inherited the server's environment")
	}
	if got.TokenMode != "-rw-------" || got.Token != "bootstrap-token-for-env-7" {
		t.Errorf("token file %s holds %q", got.TokenMode, got.Token)
	}
	if got.Dir != machineDir {
		t.Errorf("working directory %s, want %s", got.Dir, machineDir)
	}
	if !alive(got.ChildPID) {
		t.Fatal("the machine's child is not running")
	}

	if err := p.Destroy(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	for _, pid := range []int{got.ChildPID} {
		deadline := time.Now().Add(5 * time.Second)
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if alive(pid) {
			t.Errorf("process %d of the machine survived Destroy", pid)
		}
	}
	if _, err := os.Stat(machineDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("machine directory left behind: %v", err)
	}
	if st, err := p.State(ctx, m.ID); err != nil || st != provisioner.StateMissing {
		t.Errorf("State after Destroy = %v, %v", st, err)
	}
	if err := p.Destroy(ctx, m.ID); err != nil {
		t.Errorf("second Destroy: %v", err)
	}
}

func TestMachinesAreFoundAgainAfterARestartAndCreateIsIdempotent(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	p := newProvider(t, dir, "agent")
	first, err := p.Create(ctx, spec(t, 8, 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Destroy(ctx, first.ID) })
	waitSeen(t, dir, first.ID)

	// A new provider on the same directory is Stagely after a restart.
	again := newProvider(t, dir, "agent")
	m, err := again.Create(ctx, spec(t, 8, 1))
	if err != nil || m.ID != first.ID || m.State != provisioner.StateRunning {
		t.Fatalf("retried Create = %+v, %v; want the running %s", m, err, first.ID)
	}
	list, err := again.List(ctx)
	if err != nil || len(list) != 1 || list[0].ID != first.ID || list[0].EnvironmentID != 8 || list[0].Key != "env8-1" {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if procs, _ := processes(filepath.Join(dir, first.ID)); len(procs) != 2 {
		t.Errorf("%d processes carry the machine's marker, want 2 (the agent and its child): %v", len(procs), procs)
	}

	// Another namespace sharing the directory sees none of them.
	other, err := New(Config{Dir: dir, Command: []string{"true"}, Namespace: "other"})
	if err != nil {
		t.Fatal(err)
	}
	if list, err := other.List(ctx); err != nil || len(list) != 0 {
		t.Errorf("other namespace lists %+v, %v", list, err)
	}
}

func TestMachineWhoseProcessExitsIsStoppedAndDestroyCleansUp(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	p := newProvider(t, dir, "exit")
	m, err := p.Create(ctx, spec(t, 9, 1))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := p.State(ctx, m.ID)
		if err != nil {
			t.Fatal(err)
		}
		if st == provisioner.StateStopped {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("state %s, want stopped", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if list, _ := p.List(ctx); len(list) != 1 || list[0].State != provisioner.StateStopped {
		t.Errorf("List = %+v; the reaper must still see a stopped machine", list)
	}
	if err := p.Destroy(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	if list, _ := p.List(ctx); len(list) != 0 {
		t.Errorf("List after Destroy = %+v", list)
	}
}

func TestProcessThatIgnoresSIGTERMIsKilled(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	p := newProvider(t, dir, "stubborn")
	m, err := p.Create(ctx, spec(t, 10, 1))
	if err != nil {
		t.Fatal(err)
	}
	got := waitSeen(t, dir, m.ID)
	start := time.Now()
	if err := p.Destroy(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("Destroy took %s: it did not wait for SIGTERM to work", d)
	}
	if procs, _ := processes(filepath.Join(dir, m.ID)); len(procs) != 0 || alive(got.ChildPID) {
		t.Errorf("processes survived: %v", procs)
	}
}

func TestCreateRefusesUserDataThatIsNotStagelys(t *testing.T) {
	p := newProvider(t, t.TempDir(), "agent")
	s := spec(t, 11, 1)
	s.UserData = "#cloud-config\npackages: [htop]\n"
	if _, err := p.Create(t.Context(), s); !errors.Is(err, provisioner.ErrInvalidSpec) {
		t.Fatalf("err = %v", err)
	}
	if _, err := p.State(t.Context(), "../etc"); err == nil {
		t.Error("State accepted a path as an ID")
	}
	if err := p.Destroy(t.Context(), "../etc"); err == nil {
		t.Error("Destroy accepted a path as an ID")
	}
}

func TestNewNamesWhatIsMissing(t *testing.T) {
	if _, err := New(Config{Command: []string{"x"}}); err == nil || !strings.Contains(err.Error(), "directory") {
		t.Errorf("no Dir: %v", err)
	}
	if _, err := New(Config{Dir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "command") {
		t.Errorf("no Command: %v", err)
	}
}
