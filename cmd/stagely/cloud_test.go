package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/client"

	"github.com/stagely-dev/stagely/agent"
	"github.com/stagely-dev/stagely/cmd/stagely/example"
	"github.com/stagely-dev/stagely/provisioner"
	"github.com/stagely-dev/stagely/provisioner/hetzner/hetznerfake"
	"github.com/stagely-dev/stagely/reaper"
	"github.com/stagely-dev/stagely/store/storetest"
	"github.com/stagely-dev/stagely/tunnel"
)

// clearCloudCredentials keeps the machine's own cloud setup, and AWS's
// instance metadata service, out of a test.
func clearCloudCredentials(t *testing.T) {
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
		"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
		"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN", "HCLOUD_TOKEN"} {
		t.Setenv(k, "")
	}
	t.Setenv("AWS_CONFIG_FILE", os.DevNull)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
}

// refusedStart runs `stagely server` with the required settings and args,
// expecting it to refuse to start with an error naming each of want; it
// returns that error. Its Postgres is an address nothing answers on, and
// the settings of the machine's environment are kept out.
func refusedStart(t *testing.T, args, want []string) error {
	t.Helper()
	for _, k := range []string{"DATABASE_URL", "WEBHOOK_SECRET", "APP_ID", "APP_KEY_FILE", "APP_KEY", "PROVIDER", "PUBLIC_URL",
		"TUNNEL_PUBLIC_ADDR", "HTTPS_ADDR", "TLS_MODE", "TLS_CERT_FILE", "TLS_KEY_FILE"} {
		t.Setenv("STAGELY_"+k, "")
	}
	base := []string{"server", "--database-url", "postgres://nobody@127.0.0.1:1/none", "--app-id", "1", "--app-key", appKeyPEM(),
		"--webhook-secret", "0123456789abcdef", "--data-dir", t.TempDir()}
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := run(ctx, append(base, args...), &out, &errb)
	if err == nil {
		t.Fatal("the server started")
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %q", err, w)
		}
	}
	return err
}

func TestCloudProvidersRefuseToStartWithoutWhatTheyNeed(t *testing.T) {
	clearCloudCredentials(t)
	public := []string{"--public-url", "https://stagely.example.com", "--tunnel-public-addr", "tunnel.example.com:7443"}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{"unknown provider", []string{"--provider", "gcp"}, nil, []string{`--provider "gcp"`, "local, aws, digitalocean, hetzner"}},
		{"cloud without public addresses", []string{"--provider", "hetzner"}, map[string]string{"HCLOUD_TOKEN": "t"},
			[]string{"--public-url (STAGELY_PUBLIC_URL)", "--tunnel-public-addr (STAGELY_TUNNEL_PUBLIC_ADDR)"}},
		{"hetzner without a token", append([]string{"--provider", "hetzner"}, public...), nil, []string{"HCLOUD_TOKEN"}},
		{"digitalocean without a token", append([]string{"--provider", "digitalocean"}, public...), nil, []string{"DIGITALOCEAN_TOKEN"}},
		{"aws without a region", append([]string{"--provider", "aws"}, public...), nil, []string{"AWS_REGION"}},
		{"aws without credentials", append([]string{"--provider", "aws", "--machine-region", "eu-central-1"}, public...), nil, []string{"AWS_ACCESS_KEY_ID"}},
		{"an agent binary that is not there", append([]string{"--provider", "hetzner", "--agent-binary", "/nonexistent/stagely"}, public...),
			map[string]string{"HCLOUD_TOKEN": "t"}, []string{"--agent-binary", "/nonexistent/stagely"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			// Postgres is never reached: the provider is checked first.
			err := refusedStart(t, tt.args, tt.want)
			if strings.Contains(err.Error(), "127.0.0.1:1") || strings.Contains(err.Error(), "connect") {
				t.Errorf("the server went on to Postgres before checking its provider: %v", err)
			}
		})
	}
}

func TestAgentBinaryIsServedWithItsChecksum(t *testing.T) {
	body := bytes.Repeat([]byte("\x7fELF stagely "), 5000)
	path := filepath.Join(t.TempDir(), "stagely")
	if err := os.WriteFile(path, body, 0o755); err != nil {
		t.Fatal(err)
	}
	ab, err := newAgentBinary(path)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(body)
	if ab.sum != hex.EncodeToString(want[:]) {
		t.Fatalf("sum %s, want %x", ab.sum, want)
	}
	srv := httptest.NewServer(ab)
	defer srv.Close()
	tests := []struct {
		method, rng string
		status      int
		body        []byte
	}{
		{"GET", "", 200, body},
		{"HEAD", "", 200, nil},
		{"GET", "bytes=10-19", 206, body[10:20]}, // a download that broke off resumes
		{"POST", "", 405, nil},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.rng, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, srv.URL+ab.path(), nil)
			if tt.rng != "" {
				req.Header.Set("Range", tt.rng)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			if tt.status >= 300 {
				return
			}
			if !bytes.Equal(got, tt.body) {
				t.Errorf("body of %d bytes, want %d", len(got), len(tt.body))
			}
			if resp.Header.Get("X-Checksum-Sha256") != ab.sum {
				t.Errorf("checksum header %q, want %s", resp.Header.Get("X-Checksum-Sha256"), ab.sum)
			}
		})
	}
	// An upgrade renames a new binary into place: what is served is still
	// the binary the checksum was taken of.
	next := filepath.Join(filepath.Dir(path), "stagely.new")
	if err := os.WriteFile(next, []byte("a newer build"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, path); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(srv.URL + ab.path())
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if sum := sha256.Sum256(got); hex.EncodeToString(sum[:]) != ab.sum {
		t.Errorf("after the binary was replaced on disk, the server serves bytes whose sha256 is %x, not %s", sum, ab.sum)
	}
	// A server of another build (a rolling upgrade) is asked for a binary
	// it does not have: 404, which the machine's download retries, never
	// bytes that fail the checksum and end the machine's boot.
	other := strings.Repeat("0", 64)
	for _, p := range []string{agentPath + other + "/stagely", agentPath + "stagely"} {
		resp, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", p, resp.StatusCode)
		}
	}
	if _, err := newAgentBinary(t.TempDir()); err == nil {
		t.Error("a directory was accepted as the agent binary")
	}
}

// vms plays the cloud's side of a machine's first boot, as cloud-init
// does with Stagely's user data on a VM: it downloads the agent from the
// URL in the user data, refuses it unless its checksum matches, writes
// the token and CA files and starts `stagely agent` with the agent's
// environment. Deleting the server kills its agent, as a VM vanishes.
type vms struct {
	t    *testing.T
	dir  string
	mu   sync.Mutex
	proc map[int64]*exec.Cmd
	boot map[int64]provisioner.CloudInit
}

func newVMs(t *testing.T, cloud *hetznerfake.Cloud) *vms {
	v := &vms{t: t, dir: t.TempDir(), proc: map[int64]*exec.Cmd{}, boot: map[int64]provisioner.CloudInit{}}
	cloud.OnBoot(v.start)
	cloud.OnDelete(v.stop)
	t.Cleanup(func() {
		v.mu.Lock()
		defer v.mu.Unlock()
		for id, cmd := range v.proc {
			t.Logf("killing the agent of left-over server %d", id)
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return v
}

func (v *vms) start(s hetznerfake.Server) {
	boot, err := provisioner.ParseCloudInit(s.UserData)
	if err != nil {
		v.t.Errorf("server %d: user data: %v", s.ID, err)
		return
	}
	resp, err := http.Get(boot.AgentURL)
	if err != nil {
		v.t.Errorf("server %d: download the agent: %v", s.ID, err)
		return
	}
	bin, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		v.t.Errorf("server %d: download the agent: status %d, %v", s.ID, resp.StatusCode, err)
		return
	}
	if sum := sha256.Sum256(bin); hex.EncodeToString(sum[:]) != boot.AgentSHA256 {
		v.t.Errorf("server %d: the agent downloaded has sha256 %x, the user data says %s", s.ID, sum, boot.AgentSHA256)
		return
	}
	dir := filepath.Join(v.dir, strconv.FormatInt(s.ID, 10))
	files := []struct {
		name string
		data []byte
		perm os.FileMode
	}{{"stagely", bin, 0o755}, {"bootstrap-token", []byte(boot.BootstrapToken), 0o600}, {"tunnel-ca.pem", []byte(boot.TunnelCA), 0o644}}
	if err := os.MkdirAll(filepath.Join(dir, "state"), 0o700); err != nil {
		v.t.Error(err)
		return
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			v.t.Error(err)
			return
		}
	}
	log, err := os.Create(filepath.Join(dir, "output.log"))
	if err != nil {
		v.t.Error(err)
		return
	}
	defer log.Close()
	cmd := exec.Command(filepath.Join(dir, "stagely"), "agent")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "DOCKER_HOST=" + os.Getenv("DOCKER_HOST"), "STAGELY_LOG_FORMAT=json"},
		boot.Env(filepath.Join(dir, "bootstrap-token"), filepath.Join(dir, "state"), filepath.Join(dir, "tunnel-ca.pem"))...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		v.t.Errorf("server %d: start the agent: %v", s.ID, err)
		return
	}
	v.mu.Lock()
	v.proc[s.ID], v.boot[s.ID] = cmd, boot
	v.mu.Unlock()
}

func (v *vms) stop(s hetznerfake.Server) {
	v.mu.Lock()
	cmd := v.proc[s.ID]
	delete(v.proc, s.ID)
	v.mu.Unlock()
	if cmd != nil {
		cmd.Process.Kill()
		cmd.Wait()
	}
}

func (v *vms) booted() map[int64]provisioner.CloudInit {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := map[int64]provisioner.CloudInit{}
	for id, b := range v.boot {
		out[id] = b
	}
	return out
}

func (v *vms) logs() string {
	var b strings.Builder
	files, _ := filepath.Glob(filepath.Join(v.dir, "*", "output.log"))
	for _, f := range files {
		out, _ := os.ReadFile(f)
		fmt.Fprintf(&b, "--- %s\n%s\n", f, out)
	}
	return b.String()
}

// TestPreviewOnACloudMachine runs a pull request's preview on a Hetzner
// server: the server asks hcloud-go for the machine against a fake of
// Hetzner's API, the "VM" boots from the user data alone (the agent it
// downloads from the server, the CA it trusts the tunnel with), and the
// preview is served through the tunnel; closing the pull request deletes
// the server.
func TestPreviewOnACloudMachine(t *testing.T) {
	ctx := context.Background()
	clearCloudCredentials(t)
	cloud := hetznerfake.New(t)
	t.Setenv("HCLOUD_TOKEN", cloud.Token())
	machines := newVMs(t, cloud)

	bin, err := example.Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, example.Files(bin, "hello from a cloud machine"))
	cfg := w.config(2)
	tunnel := freeAddr(t)
	cfg.addr = freeAddr(t)
	certFile, keyFile, roots := wildcardCert(t, "preview.localhost")
	cfg.fleet = fleetConfig{provider: "hetzner", dataDir: t.TempDir(), previewDomain: "preview.localhost",
		proxyAddr: "127.0.0.1:0", tunnelAddr: tunnel, tunnelPublic: tunnel, publicURL: "http://" + cfg.addr,
		machineSize: "cx32", machineRegion: "nbg1", cloudEndpoint: cloud.URL(),
		https: previewTLS{addr: "127.0.0.1:0", tlsCertFile: certFile, tlsKeyFile: keyFile}}
	t.Cleanup(func() { sweepLeftovers(t, w, filepath.Join(t.TempDir(), "none")) })
	stop := w.serveConfig(cfg)
	defer stop()
	defer func() {
		if t.Failed() {
			t.Logf("machine logs:\n%s", machines.logs())
		}
	}()

	pr := w.openPR("feature")
	run := w.completed(pr.SHA, "success", 4*time.Minute)
	if !strings.HasPrefix(run.DetailsURL, "https://") {
		t.Fatalf("details_url %q: with --https-addr, previews are https", run.DetailsURL)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		code, body := getTLS(t, run.DetailsURL, roots)
		return code == 200 && strings.Contains(body, "hello from a cloud machine"), body
	})

	servers := cloud.Servers()
	if len(servers) != 1 {
		t.Fatalf("%d servers in the cloud, want 1", len(servers))
	}
	s := servers[0]
	env := w.environment(pr.Number)
	if s.ServerType != "cx32" || s.Location != "nbg1" || s.Labels["stagely-environment"] != idString(env.ID) || len(s.Firewalls) != 1 {
		t.Errorf("server %+v: want type cx32 in nbg1, labelled with environment %d, behind a firewall", s, env.ID)
	}
	boot, ok := machines.booted()[s.ID]
	if !ok {
		t.Fatalf("server %d never booted", s.ID)
	}
	if boot.ProxyAddr != tunnel || boot.TunnelCA == "" || !strings.HasPrefix(boot.AgentURL, "http://"+w.addr+"/") {
		t.Errorf("user data: proxy %s, CA %d bytes, agent from %s; want the tunnel at %s, a CA, the agent from this server (%s)",
			boot.ProxyAddr, len(boot.TunnelCA), boot.AgentURL, tunnel, w.addr)
	}

	if _, err := w.sim.ClosePR(ctx, owner, repoName, pr.Number, false, "octocat"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, func() (bool, string) {
		s := w.sticky(pr.Number)
		return len(s) == 1 && strings.Contains(s[0].Body, "Stagely preview: destroyed"), "not destroyed yet"
	})
	if code, _ := getTLS(t, run.DetailsURL, roots); code != http.StatusNotFound {
		t.Errorf("after destroy the preview answers %d, want 404", code)
	}
	if n := len(cloud.Servers()); n != 0 {
		t.Errorf("%d servers left in the cloud after the pull request closed", n)
	}
	dc, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	if left, err := projectLeft(ctx, dc, agent.ProjectName(idString(env.ID))); err != nil || left != "" {
		t.Errorf("left after destroy: %s (%v)", left, err)
	}
}

// Servers started together on a shared, empty data directory (replicas
// of one deployment) must end up with one tunnel CA, the one in the
// files: each hands its CA to the machines it makes and signs its tunnel
// certificate with it, and an agent refuses any other.
func TestServersStartingTogetherMakeOneTunnelCA(t *testing.T) {
	for round := range 20 {
		dir := t.TempDir()
		cert, key := filepath.Join(dir, "tunnel-ca.pem"), filepath.Join(dir, "tunnel-ca-key.pem")
		var cas [2]*tunnel.DevCA
		var wg sync.WaitGroup
		for i := range cas {
			wg.Go(func() {
				ca, err := tunnelCA(cert, key)
				if err != nil {
					t.Error(err)
				}
				cas[i] = ca
			})
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		onDisk, err := os.ReadFile(cert)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(cas[0].PEM, cas[1].PEM) || !bytes.Equal(onDisk, cas[0].PEM) {
			t.Fatalf("round %d: the servers hold different tunnel CAs (the file is the first's: %v, the second's: %v)",
				round, bytes.Equal(onDisk, cas[0].PEM), bytes.Equal(onDisk, cas[1].PEM))
		}
	}
}

// Machines trust the tunnel CA they were started with for as long as they
// live: the server keeps its CA across restarts, and the CA outlives any
// preview by far.
func TestTunnelCAOutlivesRestartsAndMachines(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "tunnel-ca.pem"), filepath.Join(dir, "tunnel-ca-key.pem")
	first, err := tunnelCA(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	if life := time.Until(first.Expires()); life < 5*365*24*time.Hour {
		t.Errorf("the tunnel CA is valid for %s; machines started now would be stranded when it ends", life.Round(time.Hour))
	}
	again, err := tunnelCA(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.PEM, again.PEM) {
		t.Error("a restart made a new tunnel CA: every running machine would stop trusting the proxy")
	}
	fi, err := os.Stat(key)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("the CA key file has mode %v; want 0600", fi.Mode().Perm())
	}
}

// wildcardCert writes a certificate for *.domain, signed by a CA of its
// own, and returns its files and a pool holding the CA.
func wildcardCert(t *testing.T, domain string) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test preview CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "*." + domain},
		DNSNames: []string{"*." + domain}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile = writeTestFile(t, dir, "cert.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	keyFile = writeTestFile(t, dir, "key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})))
	roots = x509.NewCertPool()
	roots.AddCert(ca)
	return certFile, keyFile, roots
}

func TestServerHTTPSSettingsAreChecked(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"https without a provider", []string{"--https-addr", ":8443", "--tls-mode", "file", "--tls-cert-file", "c", "--tls-key-file", "k"},
			[]string{"--https-addr (STAGELY_HTTPS_ADDR)", "--provider (STAGELY_PROVIDER)"}},
		{"https without certificates", []string{"--provider", "local", "--https-addr", ":8443"}, []string{"--tls-mode (STAGELY_TLS_MODE)"}},
		{"file mode without its files", []string{"--provider", "local", "--https-addr", ":8443", "--tls-mode", "file"}, []string{"--tls-cert-file (STAGELY_TLS_CERT_FILE)"}},
		{"wildcard without a DNS provider", []string{"--provider", "local", "--https-addr", ":8443", "--tls-mode", "wildcard"}, []string{"--dns-provider (STAGELY_DNS_PROVIDER)"}},
		{"certificate files that are not there", []string{"--provider", "local", "--proxy-addr", "127.0.0.1:0", "--tunnel-addr", "127.0.0.1:0",
			"--https-addr", "127.0.0.1:0", "--tls-cert-file", "/nonexistent/cert.pem", "--tls-key-file", "/nonexistent/key.pem"},
			[]string{"--tls-cert-file/--tls-key-file", "/nonexistent/cert.pem"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { refusedStart(t, tt.args, tt.want) })
	}
}

// Several servers share previews only through Valkey and the hop; a
// hop that cannot work is refused at the start, naming why.
func TestServerHopSettingsAreChecked(t *testing.T) {
	secret := strings.Repeat("s", 32)
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"hop without a provider", []string{"--hop-addr", "10.0.0.5:9443", "--hop-secret", secret},
			[]string{"--hop-addr (STAGELY_HOP_ADDR)", "--provider (STAGELY_PROVIDER)"}},
		{"hop without valkey", []string{"--provider", "local", "--hop-addr", "10.0.0.5:9443", "--hop-secret", secret},
			[]string{"--hop-addr needs --valkey-url"}},
		{"hop with a short secret", []string{"--provider", "local", "--valkey-url", "redis://127.0.0.1:1/0", "--hop-addr", "10.0.0.5:9443", "--hop-secret", "short"},
			[]string{"--hop-secret (STAGELY_HOP_SECRET)", "32"}},
		{"hop that nobody can dial", []string{"--provider", "local", "--valkey-url", "redis://127.0.0.1:1/0", "--hop-addr", ":9443", "--hop-secret", secret},
			[]string{"--advertise-addr (STAGELY_ADVERTISE_ADDR)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { refusedStart(t, tt.args, tt.want) })
	}
}

// Two Stagely installations (two databases, two servers) share one cloud
// project, each with its own --namespace: neither takes the other's
// machine for its own, nor destroys it as an orphan.
func TestInstallationsSharingACloudAccountKeepToTheirOwnMachines(t *testing.T) {
	clearCloudCredentials(t)
	ctx := t.Context()
	f := hetznerfake.New(t)
	t.Setenv("HCLOUD_TOKEN", f.Token())
	provider := func(namespace string) provisioner.Provider {
		p, err := newProvider(ctx, fleetConfig{provider: "hetzner", cloudEndpoint: f.URL(), namespace: namespace}, t.TempDir(), "stagely")
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	// Both number their environments and attempts from 1.
	pb := provider("team-b")
	mb, err := pb.Create(ctx, provisioner.Spec{EnvironmentID: 1, Key: provisioner.Key(1, 1), UserData: "#cloud-config\n# installation B\n"})
	if err != nil {
		t.Fatal(err)
	}
	pa := provider("team-a")
	ma, err := pa.Create(ctx, provisioner.Spec{EnvironmentID: 1, Key: provisioner.Key(1, 1), UserData: "#cloud-config\n# installation A\n"})
	if err != nil {
		t.Fatal(err)
	}
	if ma.ID == mb.ID {
		t.Fatalf("installation A's machine for its environment 1 is installation B's server %s", mb.ID)
	}
	// A's reaper, whose database records nothing of B's, an hour later.
	rp, err := reaper.New(reaper.Config{DB: storetest.New(t), Provider: pa, Now: func() time.Time { return time.Now().Add(time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := rp.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range rep.Orphans {
		if o.ID == mb.ID {
			t.Errorf("installation A's orphan sweep destroyed installation B's server %s", o.ID)
		}
	}
}
