package provisioner

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// golden compares got with testdata/name.golden, or rewrites the file when
// the test runs with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -run '%s' -update creates it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -run '%s' -update rewrites it)\n--- got ---\n%s\n--- want ---\n%s", path, t.Name(), got, want)
	}
}

// testCA is a certificate for the tunnel CA slot; made once with openssl,
// valid a century, its key thrown away.
func testCA(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "tunnel-ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func exampleCloudInit() CloudInit {
	return CloudInit{
		EnvironmentID:  42,
		ServerURL:      "https://stagely.example.com",
		ProxyAddr:      "tunnel.example.com:7443",
		AgentURL:       "https://stagely.example.com/agent/stagely-linux-amd64",
		AgentSHA256:    strings.Repeat("ab", 32),
		BootstrapToken: "bt_0123456789abcdefABCDEF-_.~+/=",
	}
}

func TestRenderCloudInitMatchesGolden(t *testing.T) {
	tests := []struct {
		name   string
		change func(*CloudInit)
	}{
		{"cloud-init", func(*CloudInit) {}},
		{"cloud-init-private-ca", func(c *CloudInit) { c.TunnelCA = testCA(t) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := exampleCloudInit()
			tt.change(&c)
			out, err := RenderCloudInit(c)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tt.name, out)
		})
	}
}

// cloudConfig is the part of cloud-init's schema the machine depends on.
type cloudConfig struct {
	WriteFiles []struct {
		Path        string `yaml:"path"`
		Owner       string `yaml:"owner"`
		Permissions string `yaml:"permissions"`
		Content     string `yaml:"content"`
	} `yaml:"write_files"`
	RunCmd [][]string `yaml:"runcmd"`
}

func TestRenderedCloudInitIsCloudConfigYAML(t *testing.T) {
	c := exampleCloudInit()
	c.TunnelCA = "Issued for the tunnel:\n" + testCA(t) // text around PEM is dropped
	out, err := RenderCloudInit(c)
	if err != nil {
		t.Fatal(err)
	}
	if first, _, _ := strings.Cut(out, "\n"); first != "#cloud-config" {
		t.Fatalf("first line %q, cloud-init needs #cloud-config", first)
	}

	var top map[string]any
	if err := yaml.Unmarshal([]byte(out), &top); err != nil {
		t.Fatalf("not YAML: %v", err)
	}
	for k := range top {
		if k != "write_files" && k != "runcmd" {
			t.Errorf("unexpected top-level key %q", k)
		}
	}

	var cc cloudConfig
	dec := yaml.NewDecoder(strings.NewReader(out))
	dec.KnownFields(true)
	if err := dec.Decode(&cc); err != nil {
		t.Fatalf("decode cloud-config: %v", err)
	}
	files := map[string]int{}
	for i, f := range cc.WriteFiles {
		files[f.Path] = i
		if f.Owner != "root:root" {
			t.Errorf("%s owner %q", f.Path, f.Owner)
		}
	}
	file := func(path string) (perm, content string) {
		t.Helper()
		i, ok := files[path]
		if !ok {
			t.Fatalf("no write_files entry for %s", path)
		}
		return cc.WriteFiles[i].Permissions, cc.WriteFiles[i].Content
	}

	perm, token := file("/etc/stagely/bootstrap-token")
	if perm != "0600" || token != c.BootstrapToken {
		t.Errorf("token file: permissions %q content %q", perm, token)
	}
	perm, env := file("/etc/stagely/agent.env")
	if perm != "0600" {
		t.Errorf("agent.env permissions %q", perm)
	}
	for _, line := range c.Env("/etc/stagely/bootstrap-token", "/var/lib/stagely", "/etc/stagely/tunnel-ca.pem") {
		if !strings.Contains(env, line+"\n") {
			t.Errorf("agent.env lacks %q:\n%s", line, env)
		}
	}
	if !strings.Contains(env, "STAGELY_CA_FILE=/etc/stagely/tunnel-ca.pem\n") {
		t.Errorf("agent.env does not point the agent at the tunnel CA:\n%s", env)
	}
	perm, ca := file("/etc/stagely/tunnel-ca.pem")
	if perm != "0644" || ca != testCA(t) {
		t.Errorf("tunnel CA file: permissions %q content %q, want the certificate alone", perm, ca)
	}
	_, unit := file("/etc/systemd/system/stagely-agent.service")
	for _, want := range []string{"Restart=always", "ExecStart=/usr/local/bin/stagely agent", "EnvironmentFile=/etc/stagely/agent.env", "WantedBy=multi-user.target"} {
		if !strings.Contains(unit, want+"\n") {
			t.Errorf("unit lacks %q", want)
		}
	}
	perm, script := file("/usr/local/lib/stagely/bootstrap.sh")
	if perm != "0700" || !strings.HasPrefix(script, "#!/bin/sh\n") {
		t.Errorf("bootstrap script: permissions %q, starts %.20q", perm, script)
	}
	for _, want := range []string{"docker.io docker-compose-v2", `sha256sum -c`, `"$STAGELY_AGENT_URL"`, "systemctl enable --now stagely-agent.service"} {
		if !strings.Contains(script, want) {
			t.Errorf("bootstrap script lacks %q", want)
		}
	}
	if len(cc.RunCmd) != 1 || len(cc.RunCmd[0]) != 1 || cc.RunCmd[0][0] != "/usr/local/lib/stagely/bootstrap.sh" {
		t.Errorf("runcmd = %q", cc.RunCmd)
	}
}

func TestParseCloudInitReadsBackWhatWasRendered(t *testing.T) {
	c := exampleCloudInit()
	c.TunnelCA = testCA(t)
	out, err := RenderCloudInit(c)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseCloudInit(out)
	if err != nil {
		t.Fatal(err)
	}
	if got != c {
		t.Errorf("ParseCloudInit = %+v, want %+v", got, c)
	}
	if _, err := ParseCloudInit("#cloud-config\npackages: [htop]\n"); err == nil {
		t.Error("ParseCloudInit accepted user data that is not Stagely's")
	}
}

func TestRenderCloudInitRefusesUnsafeValues(t *testing.T) {
	tests := []struct {
		name   string
		change func(*CloudInit)
		want   string
	}{
		{"quote in the server URL", func(c *CloudInit) { c.ServerURL = "https://x/'; rm -rf /" }, "server URL"},
		{"newline in the token", func(c *CloudInit) { c.BootstrapToken += "\nruncmd: [reboot]" }, "bootstrap token"},
		{"short token", func(c *CloudInit) { c.BootstrapToken = "short" }, "bootstrap token"},
		{"file URL for the agent", func(c *CloudInit) { c.AgentURL = "file:///etc/passwd" }, "agent URL"},
		{"upper-case checksum", func(c *CloudInit) { c.AgentSHA256 = strings.Repeat("AB", 32) }, "SHA-256"},
		{"proxy without port", func(c *CloudInit) { c.ProxyAddr = "tunnel.example.com" }, "proxy address"},
		{"proxy with a space", func(c *CloudInit) { c.ProxyAddr = "a b:1" }, "proxy address"},
		{"no environment", func(c *CloudInit) { c.EnvironmentID = 0 }, "environment id"},
		{"a key in the CA bundle", func(c *CloudInit) {
			c.TunnelCA = testCA(t) + "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
		}, "tunnel CA holds a PRIVATE KEY block"},
		{"no certificate in the CA bundle", func(c *CloudInit) { c.TunnelCA = "not a certificate" }, "tunnel CA holds no PEM"},
		{"a broken certificate", func(c *CloudInit) {
			c.TunnelCA = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
		}, "does not parse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := exampleCloudInit()
			tt.change(&c)
			_, err := RenderCloudInit(c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one naming %q", err, tt.want)
			}
			if strings.Contains(err.Error(), c.BootstrapToken) {
				t.Errorf("error shows the token: %v", err)
			}
		})
	}
}

func TestBootstrapScriptIsValidShell(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh to check the script with")
	}
	out, err := RenderCloudInit(exampleCloudInit())
	if err != nil {
		t.Fatal(err)
	}
	var cc cloudConfig
	if err := yaml.Unmarshal([]byte(out), &cc); err != nil {
		t.Fatal(err)
	}
	for _, f := range cc.WriteFiles {
		if f.Path != "/usr/local/lib/stagely/bootstrap.sh" {
			continue
		}
		cmd := exec.Command(sh, "-n")
		cmd.Stdin = strings.NewReader(f.Content)
		if msg, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("sh -n: %v\n%s", err, msg)
		}
		return
	}
	t.Fatal("no bootstrap script")
}
