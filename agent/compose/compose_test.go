package compose_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/stagely-dev/stagely/agent/compose"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// repo writes files into a fresh repository directory.
func repo(t *testing.T, files map[string]string) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "src")
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCheckRefusesWhatThePolicyForbidsNamingFileLineServiceAndKey(t *testing.T) {
	tests := []struct {
		name   string
		files  map[string]string
		order  []string
		vars   map[string]string
		policy protocol.Policy
		want   []string // substrings of the message, "" for no error
	}{
		{name: "privileged", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    privileged: true\n"},
			want: []string{`compose.yaml:4: service "web": privileged: true is not allowed (policy allow_privileged is off)`}},
		{name: "privileged allowed by policy", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    privileged: true\n"},
			policy: protocol.Policy{AllowPrivileged: true}},
		{name: "privileged set in the second file", order: []string{"compose.yaml", "ci/extra.yaml"},
			files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n", "ci/extra.yaml": "services:\n  web:\n    privileged: true\n"},
			want:  []string{`ci/extra.yaml:3: service "web": privileged: true`}},
		{name: "privileged through interpolation", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    privileged: ${PRIV}\n"},
			vars: map[string]string{"PRIV": "true"}, want: []string{`compose.yaml:4: service "web": privileged`}},
		{name: "privileged in a profile", files: map[string]string{"compose.yaml": "services:\n  dbg:\n    image: x\n    profiles: [debug]\n    privileged: true\n"},
			want: []string{`service "dbg": privileged`}},
		{name: "host network", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    network_mode: host\n"},
			want: []string{`compose.yaml:4: service "web": network_mode: host is not allowed (policy allow_host_network is off)`}},
		{name: "host pid", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    pid: host\n"},
			want: []string{`compose.yaml:4: service "web": pid: host is not allowed (policy allow_host_namespaces is off)`}},
		{name: "docker socket", files: map[string]string{"compose.yaml": "services:\n  ci:\n    image: x\n    volumes:\n      - /var/run/docker.sock:/var/run/docker.sock\n"},
			want: []string{`compose.yaml:4: service "ci": volumes: /var/run/docker.sock (the Docker socket) is not allowed (policy allow_docker_socket is off)`}},
		{name: "docker socket even when host mounts are allowed", files: map[string]string{"compose.yaml": "services:\n  ci:\n    image: x\n    volumes: [\"/run:/host-run\"]\n"},
			policy: protocol.Policy{AllowHostMounts: true}, want: []string{`volumes: /run (the Docker socket)`}},
		{name: "bind mount outside the repository", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    volumes:\n      - ../../etc:/host-etc:ro\n"},
			want: []string{`service "web": volumes:`, `(outside the repository) is not allowed (policy allow_host_mounts is off)`}},
		{name: "bind mount inside the repository", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    volumes: [\"./data:/data\", \"cache:/cache\"]\nvolumes:\n  cache: {}\n"}},
		{name: "build context outside the repository", files: map[string]string{"compose.yaml": "services:\n  web:\n    build: /\n"},
			want: []string{`service "web": build.context: / (outside the repository)`}},
		{name: "dockerfile climbing out of its context", files: map[string]string{"compose.yaml": "services:\n  web:\n    build:\n      context: .\n      dockerfile: ../../Dockerfile\n"},
			want: []string{`service "web": build.dockerfile:`}},
		{name: "env file outside the repository", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    env_file: /etc/shadow\n"},
			want: []string{`service "web": env_file: /etc/shadow (outside the repository)`}},
		{name: "secret file outside the repository", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    secrets: [k]\nsecrets:\n  k:\n    file: /home/dev/.ssh/id_rsa\n"},
			want: []string{`compose.yaml:7: top level: secrets.k.file: /home/dev/.ssh/id_rsa`}},
		{name: "volume binding a host device", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    volumes: [v:/v]\nvolumes:\n  v:\n    driver_opts: {type: none, o: bind, device: /etc}\n"},
			want: []string{`volumes.v.driver_opts.device: /etc`}},
		{name: "host network through a network named host", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    networks: [h]\nnetworks:\n  h:\n    name: host\n    external: true\n"},
			want: []string{`compose.yaml:4: service "web": networks: h (the host network) is not allowed (policy allow_host_network is off)`}},
		{name: "host network as the default network", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\nnetworks:\n  default:\n    name: host\n    external: true\n"},
			want: []string{`service "web": networks: default (the host network)`}},
		{name: "volume mounting a host disk", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    volumes: [v:/v]\nvolumes:\n  v:\n    driver_opts: {type: ext4, device: /dev/vda1}\n"},
			want: []string{`compose.yaml:7: top level: volumes.v.driver_opts: type ext4 of /dev/vda1 (a host mount) is not allowed (policy allow_host_mounts is off)`}},
		{name: "volume mounting an overlay of host directories", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    volumes: [v:/v]\nvolumes:\n  v:\n    driver_opts: {type: overlay, device: overlay, o: 'lowerdir=/etc,upperdir=/var/u,workdir=/var/w'}\n"},
			want: []string{`volumes.v.driver_opts: type overlay of overlay (a host mount)`}},
		{name: "tmpfs and nfs volumes", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    volumes: [t:/t, n:/n]\nvolumes:\n  t:\n    driver_opts: {type: tmpfs, device: tmpfs, o: size=64m}\n  n:\n    driver_opts: {type: nfs, device: ':/export', o: addr=10.0.0.2}\n"}},
		{name: "device cgroup rules", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    device_cgroup_rules: ['b *:* rwm']\n"},
			want: []string{`compose.yaml:4: service "web": device_cgroup_rules: b *:* rwm is not allowed (policy allow_privileged is off)`}},
		{name: "build entitlements", files: map[string]string{"compose.yaml": "services:\n  web:\n    build:\n      context: .\n      entitlements: [network.host, security.insecure]\n"},
			want: []string{`compose.yaml:5: service "web": build.entitlements: network.host is not allowed (policy allow_host_network is off)`,
				`compose.yaml:5: service "web": build.entitlements: security.insecure is not allowed (policy allow_privileged is off)`}},
		{name: "build ssh key outside the repository", files: map[string]string{"compose.yaml": "services:\n  web:\n    build:\n      context: .\n      ssh: [\"key=/home/dev/.ssh/id_ed25519\", default]\n"},
			want: []string{`compose.yaml:5: service "web": build.ssh.key: /home/dev/.ssh/id_ed25519 (outside the repository)`}},
		{name: "build ssh key inside the repository", files: map[string]string{"compose.yaml": "services:\n  web:\n    build:\n      context: .\n      ssh: [\"key=./deploy_key\"]\n"}},
		{name: "privileged post_start hook", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    post_start:\n      - command: id\n        privileged: true\n"},
			want: []string{`compose.yaml:4: service "web": post_start[0].privileged: true is not allowed (policy allow_privileged is off)`}},
		{name: "privileged pre_stop hook", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    pre_stop:\n      - command: id\n        privileged: true\n"},
			want: []string{`compose.yaml:4: service "web": pre_stop[0].privileged: true`}},
		{name: "pre_start container", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    pre_start:\n      - image: x\n        privileged: true\n        volumes: [\"/etc:/host\"]\n"},
			want: []string{`compose.yaml:4: service "web": pre_start[0].privileged: true`, `compose.yaml:4: service "web": pre_start[0].volumes: /etc (outside the repository)`}},
		{name: "job", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\njobs:\n  j:\n    image: x\n    privileged: true\n    network_mode: host\n    triggers: {manual: true}\n"},
			want: []string{`compose.yaml:7: top level: jobs.j.privileged: true is not allowed`, `compose.yaml:8: top level: jobs.j.network_mode: host`}},
		{name: "cap_add SYS_ADMIN", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    cap_add: [NET_BIND_SERVICE, SYS_ADMIN]\n"},
			want: []string{`compose.yaml:4: service "web": cap_add: SYS_ADMIN`}},
		{name: "cap_add of a capability that reaches the machine", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    cap_add: [NET_ADMIN, cap_sys_module]\n"},
			want: []string{`compose.yaml:4: service "web": cap_add: cap_sys_module`}},
		{name: "cap_add DAC_READ_SEARCH", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    cap_add: [DAC_READ_SEARCH]\n"},
			want: []string{`cap_add: DAC_READ_SEARCH`}},
		{name: "unconfined seccomp", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    security_opt: [no-new-privileges:true, seccomp=unconfined]\n"},
			want: []string{`compose.yaml:4: service "web": security_opt: seccomp=unconfined`}},
		{name: "unmasked /proc and /sys", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    security_opt: [\"systempaths=unconfined\"]\n"},
			want: []string{`security_opt: systempaths=unconfined`}},
		{name: "no AppArmor profile", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    security_opt: [\"apparmor:unconfined\"]\n"},
			want: []string{`security_opt: apparmor:unconfined`}},
		{name: "confining security options and capabilities", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    cap_add: [NET_BIND_SERVICE, NET_ADMIN]\n    security_opt: [no-new-privileges:true]\n"}},
		{name: "unconfined allowed by policy", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    cap_add: [SYS_PTRACE]\n    security_opt: [seccomp=unconfined]\n"},
			policy: protocol.Policy{AllowPrivileged: true}},
		{name: "privileged through extends", files: map[string]string{
			"compose.yaml": "services:\n  web:\n    extends: {file: base.yaml, service: base}\n",
			"base.yaml":    "services:\n  base:\n    image: x\n    privileged: true\n"},
			want: []string{`compose.yaml: service "web": privileged: true`}},
		{name: "several violations listed together", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    privileged: true\n    network_mode: host\n"},
			want: []string{"compose.yaml:4:", "compose.yaml:5:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := repo(t, tt.files)
			order := tt.order
			if order == nil {
				order = []string{"compose.yaml"}
			}
			p, err := compose.Load(context.Background(), "stagely-test", root, order, tt.vars)
			if err != nil {
				t.Fatal(err)
			}
			err = compose.Check(p, tt.policy)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var pe *compose.PolicyError
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v, want a *PolicyError", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func TestLoadRefusesIncludesFromOutsideTheRepository(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "evil.yaml")
	os.WriteFile(outside, []byte("services:\n  x:\n    image: x\n"), 0o644)
	root := repo(t, map[string]string{"compose.yaml": "include:\n  - " + outside + "\nservices:\n  web:\n    image: x\n"})
	_, err := compose.Load(context.Background(), "stagely-test", root, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "outside the repository") {
		t.Fatalf("err = %v", err)
	}
}

func TestLoadNamesAMissingComposeFile(t *testing.T) {
	root := repo(t, map[string]string{"other.yaml": "services: {}\n"})
	for _, files := range [][]string{{"compose.yaml"}, {"../compose.yaml"}} {
		_, err := compose.Load(context.Background(), "stagely-test", root, files, nil)
		if err == nil || !strings.Contains(err.Error(), files[0]) {
			t.Fatalf("Load(%v) err = %v", files, err)
		}
	}
}

func TestOverrideRemovesPortsAndLabelsEveryService(t *testing.T) {
	root := repo(t, map[string]string{"compose.yaml": `services:
  web:
    build: ./web
    ports: ["8080:8080", "127.0.0.1:9090:9090"]
    labels: {team: web}
  db:
    image: postgres
    ports: ["5432"]
    profiles: [db]
`})
	p, err := compose.Load(context.Background(), "stagely-env1", root, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	envFile := filepath.Join(filepath.Dir(root), "private", "env")
	b, err := compose.Override(p, "env1", envFile)
	if err != nil {
		t.Fatal(err)
	}
	overridePath := filepath.Join(filepath.Dir(root), "private", "override.yaml")
	if err := compose.WriteOverride(overridePath, b); err != nil {
		t.Fatal(err)
	}
	if err := compose.WriteEnvFile(envFile, map[string]string{"A": "1"}); err != nil {
		t.Fatal(err)
	}
	// Load both files the way compose will.
	merged, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  root,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(root, "compose.yaml")}, {Filename: overridePath}},
		Environment: map[string]string{},
	}, func(o *loader.Options) { o.SetProjectName("stagely-env1", true); o.Profiles = []string{"*"} })
	if err != nil {
		t.Fatalf("compose-go rejects the override: %v\n%s", err, b)
	}
	for name, s := range merged.Services {
		if len(s.Ports) != 0 {
			t.Errorf("service %s still publishes %v", name, s.Ports)
		}
		if s.Labels[compose.LabelEnvironment] != "env1" || s.Labels[compose.LabelManaged] != "true" {
			t.Errorf("service %s labels = %v", name, s.Labels)
		}
		if len(s.EnvFiles) == 0 || s.EnvFiles[len(s.EnvFiles)-1].Path != envFile {
			t.Errorf("service %s env files = %v", name, s.EnvFiles)
		}
	}
	if merged.Services["web"].Labels["team"] != "web" {
		t.Error("the service's own labels were lost")
	}
	if merged.Services["web"].Build.Labels[compose.LabelEnvironment] != "env1" {
		t.Errorf("built image labels = %v", merged.Services["web"].Build.Labels)
	}
	if merged.Services["db"].Build != nil {
		t.Error("the override gave an image-only service a build section")
	}
	if st, _ := os.Stat(overridePath); st.Mode().Perm() != 0o600 {
		t.Errorf("override mode %v", st.Mode().Perm())
	}
}

func TestEnvFileRoundTripsAnyValueAndIsPrivate(t *testing.T) {
	vars := map[string]string{
		"PLAIN":     "hello",
		"SPACES":    "  a b  ",
		"QUOTE":     `it's "quoted"`,
		"DOLLAR":    "pa$$word${HOME}$X",
		"BACKSLASH": `C:\path\`,
		"NEWLINES":  "line1\nline2\r\nline3",
		"HASH":      "a #not a comment",
		"EMPTY":     "",
		"MIXED":     `'\'"\"$\$` + "\n",
	}
	path := filepath.Join(t.TempDir(), "private", "env")
	if err := compose.WriteEnvFile(path, vars); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := dotenv.UnmarshalBytesWithLookup(b, func(string) (string, bool) { return "LEAKED", true })
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range vars {
		if got[k] != want {
			t.Errorf("%s: read back %q, wrote %q", k, got[k], want)
		}
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("env file mode %v, want 0600", st.Mode().Perm())
	}
	if dst, _ := os.Stat(filepath.Dir(path)); dst.Mode().Perm() != 0o700 {
		t.Errorf("env file directory mode %v, want 0700", dst.Mode().Perm())
	}
	if err := compose.WriteEnvFile(path, map[string]string{"BAD-NAME": "x"}); err == nil {
		t.Error("accepted an invalid variable name")
	}
}

func TestVersionSaysWhenThePluginIsMissing(t *testing.T) {
	_, err := compose.CLI{Command: []string{"stagely-no-such-docker", "compose"}}.Version(context.Background())
	if !errors.Is(err, compose.ErrPluginMissing) || !strings.Contains(err.Error(), "not installed") {
		t.Fatalf("err = %v", err)
	}
	// A docker CLI without the plugin: `docker compose` is not a command.
	_, err = compose.CLI{Command: []string{"false"}}.Version(context.Background())
	if !errors.Is(err, compose.ErrPluginMissing) {
		t.Fatalf("err = %v", err)
	}
}

// TestCheckSeesTheVariablesComposeRunsWith: `docker compose` interpolates
// with its own environment (PATH, HOME, DOCKER_*: see CLI.Env) before the
// env files. A check made without those variables passes a file that
// compose then runs otherwise.
func TestCheckSeesTheVariablesComposeRunsWith(t *testing.T) {
	t.Setenv("HOME", "/home/agent")
	root := repo(t, map[string]string{"compose.yaml": "services:\n  web:\n    image: x\n    network_mode: ${HOME:+host}\n"})
	p, err := compose.Load(context.Background(), "stagely-test", root, nil, map[string]string{"HOME": ""})
	if err != nil {
		t.Fatal(err)
	}
	err = compose.Check(p, protocol.Policy{})
	if err == nil || !strings.Contains(err.Error(), "network_mode: host is not allowed") {
		t.Fatalf("err = %v, want network_mode: host refused", err)
	}
}

func TestLoadRefusesReferencesThatMayLeadOutOfTheRepository(t *testing.T) {
	inc := "services:\n  inc:\n    image: x\n"
	tests := []struct {
		name  string
		files map[string]string
	}{
		{name: "include climbing out", files: map[string]string{
			"compose.yaml": "include:\n  - ../outside.yaml\nservices:\n  web:\n    image: x\n"}},
		{name: "extends climbing out", files: map[string]string{
			"compose.yaml": "services:\n  web:\n    extends: {file: ../outside.yaml, service: x}\n"}},
		{name: "extends climbing out of an included file", files: map[string]string{
			"compose.yaml": "include:\n  - sub/inc.yaml\n",
			"sub/inc.yaml": "services:\n  web:\n    extends: {file: ../../outside.yaml, service: x}\n"}},
		{name: "include env_file climbing out", files: map[string]string{
			"compose.yaml": "include:\n  - path: inc.yaml\n    env_file: ../outside.env\n", "inc.yaml": inc}},
		{name: "include env_file through a variable", files: map[string]string{
			"compose.yaml": "include:\n  - path: inc.yaml\n    env_file: ${UP:-..}/outside.env\n", "inc.yaml": inc}},
		{name: "include project_directory climbing out", files: map[string]string{
			"compose.yaml": "include:\n  - path: inc.yaml\n    project_directory: ..\n", "inc.yaml": inc}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := repo(t, tt.files)
			outside := filepath.Dir(root)
			os.WriteFile(filepath.Join(outside, "outside.yaml"), []byte("services:\n  x:\n    image: outside\n"), 0o644)
			os.WriteFile(filepath.Join(outside, "outside.env"), []byte("TOKEN=outside\n"), 0o644)
			p, err := compose.Load(context.Background(), "stagely-test", root, nil, nil)
			if err == nil {
				t.Fatalf("loaded %v from outside the repository", p.Model.ServiceNames())
			}
			if !strings.Contains(err.Error(), "outside the repository") {
				t.Fatalf("err = %v, want it to say outside the repository", err)
			}
		})
	}
}

// TestCheckSeesWhatComposeRunsWhateverTheAgentsWorkingDirectory: compose-go
// resolves an included file's own include env_file against the process's
// working directory. The agent's (here: a directory holding etc/os-release,
// as / does) is not compose's, the repository: the file checked must not
// be one that compose then runs privileged.
func TestCheckSeesWhatComposeRunsWhateverTheAgentsWorkingDirectory(t *testing.T) {
	root := repo(t, map[string]string{
		"compose.yaml":   "include:\n  - etc/inc.yaml\n",
		"etc/inc.yaml":   "include:\n  - path: inner.yaml\n    env_file: os-release\n",
		"etc/inner.yaml": "services:\n  web:\n    image: x\n    privileged: ${PRIV:-false}\n",
		"etc/os-release": "PRIV=true\n",
	})
	host := t.TempDir()
	os.MkdirAll(filepath.Join(host, "etc"), 0o755)
	os.WriteFile(filepath.Join(host, "etc", "os-release"), []byte("NAME=Linux\n"), 0o644)
	for _, cwd := range []string{root, host} {
		t.Chdir(cwd)
		p, err := compose.Load(context.Background(), "stagely-test", root, nil, nil)
		if err == nil {
			err = compose.Check(p, protocol.Policy{})
		}
		if err == nil {
			t.Fatalf("working in %s: passed the check; compose, working in the repository, runs web privileged", cwd)
		}
	}
}

func TestLoadFollowsReferencesInsideTheRepository(t *testing.T) {
	root := repo(t, map[string]string{
		"compose.yaml":   "include:\n  - path: sub/inc.yaml\n    env_file: sub/vars.env\nservices:\n  web:\n    extends: {file: base.yaml, service: base}\n",
		"base.yaml":      "services:\n  base:\n    image: base\n",
		"sub/vars.env":   "TAG=1\n",
		"sub/inc.yaml":   "include:\n  - inner.yaml\nservices:\n  api:\n    image: api:${TAG}\n",
		"sub/inner.yaml": "services:\n  db:\n    extends: {file: db.yaml, service: db}\n",
		"sub/db.yaml":    "services:\n  db:\n    image: postgres\n",
	})
	p, err := compose.Load(context.Background(), "stagely-test", root, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Model.Services["api"].Image; got != "api:1" {
		t.Errorf("api image = %q, want api:1", got)
	}
	if got := p.Model.Services["db"].Image; got != "postgres" {
		t.Errorf("db image = %q, want postgres", got)
	}
}
