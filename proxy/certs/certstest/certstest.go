// Package certstest runs a real ACME CA for tests of package certs and of
// the proxy: Pebble and pebble-challtestsrv, each started as a process on
// loopback ports chosen at random, with Pebble's validation real
// (PEBBLE_VA_ALWAYS_VALID is never set): Pebble looks the DNS-01 TXT
// record up in challtestsrv's DNS server, where ChalltestDNS put it
// through challtestsrv's management API. Both binaries come from
// scripts/services.sh; a test fails, never skips, without them.
//
// It is not for production code: it calls t.Fatal.
package certstest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"go/build"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/libdns/libdns"
	"github.com/miekg/dns"

	"github.com/stagely-dev/stagely/proxy/certs"
)

// Env is one Pebble CA with its challenge server, for one test and one
// preview domain.
type Env struct {
	// Domain is the preview domain the test obtains certificates under.
	Domain string
	// Directory is Pebble's ACME directory URL.
	Directory string
	// ACMERoots trusts Pebble's own listeners (not the certificates it
	// issues): certs.Config.ACMERoots.
	ACMERoots *x509.CertPool
	// ACMERootsPEM is ACMERoots as PEM, for a CA file setting.
	ACMERootsPEM []byte
	// IssuedRoots trusts what Pebble issues: its root, fetched from its
	// management interface (/roots/0). A client verifies the proxy
	// against it.
	IssuedRoots *x509.CertPool
	// DNS publishes TXT records in challtestsrv: certs.Config.DNS.
	DNS *ChalltestDNS
	// Resolver is a DNS server (host:port) authoritative for Domain and
	// answering everything else from challtestsrv:
	// certs.Config.DNSResolvers.
	Resolver string
}

// Config returns a certs.Config that obtains certificates for Domain from
// this Pebble through DNS-01, kept in storage.
func (e *Env) Config(mode certs.Mode, storage certmagic.Storage) certs.Config {
	return certs.Config{
		Mode:          mode,
		PreviewDomain: e.Domain,
		ACMEDirectory: e.Directory,
		Email:         "ops@example.com",
		ACMERoots:     e.ACMERoots,
		DNS:           e.DNS,
		DNSResolvers:  []string{e.Resolver},
		Storage:       storage,
	}
}

// Client returns an HTTPS client that connects to addr whatever host the
// URL names (preview names resolve nowhere in a test), and verifies the
// server's chain against IssuedRoots only.
func (e *Env) Client(addr string) *http.Client {
	var d net.Dialer
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return d.DialContext(ctx, network, addr)
			},
			TLSClientConfig: &tls.Config{RootCAs: e.IssuedRoots},
		},
	}
}

// PreviewDomain returns a preview domain no other test uses, so that
// nothing certmagic caches per process (SOA lookups, challenges) leaks
// from one test into another.
func PreviewDomain() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "pv" + hex.EncodeToString(b[:]) + ".stagely.test"
}

// findBinary looks for a tool scripts/services.sh installs.
func findBinary(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range filepath.SplitList(build.Default.GOPATH) {
		p := filepath.Join(dir, "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("%s is required for this test and was found neither in PATH nor in GOPATH/bin: run scripts/services.sh", name)
	return ""
}

// freePort returns a loopback port free for both TCP and UDP (a DNS
// server takes both).
func freePort(t testing.TB) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free loopback port")
	return 0
}

// startProcess runs a server for the rest of the test, its output kept
// and logged if the test fails.
func startProcess(t testing.TB, env []string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("output of %s:\n%s", filepath.Base(name), out.String())
		}
	})
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor polls until ok returns nil or 10s pass.
func waitFor(t testing.TB, what string, ok func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := ok()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not come up: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Start starts challtestsrv, Pebble and a resolver authoritative for
// domain, all stopped when the test ends.
func Start(t testing.TB, domain string) *Env {
	t.Helper()
	pebble := findBinary(t, "pebble")
	challtestsrv := findBinary(t, "pebble-challtestsrv")
	dir := t.TempDir()

	// challtestsrv: DNS and its management API only.
	dnsPort, mgmtPort := freePort(t), freePort(t)
	startProcess(t, os.Environ(), challtestsrv,
		"-http01", "", "-https01", "", "-doh", "", "-tlsalpn01", "",
		"-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort),
		"-management", fmt.Sprintf("127.0.0.1:%d", mgmtPort),
		"-defaultIPv6", "")
	ctDNS := &ChalltestDNS{mgmt: fmt.Sprintf("http://127.0.0.1:%d", mgmtPort)}
	waitFor(t, "pebble-challtestsrv", func() error {
		return ctDNS.post(context.Background(), "/clear-txt", map[string]string{"host": "ready.invalid"})
	})

	// Pebble, serving its API and management interface with a certificate
	// from a CA made for this test.
	caPEM, certPEM, keyPEM := makeListenerCert(t)
	certFile, keyFile, cfgFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "pebble.json")
	writeFile(t, certFile, certPEM)
	writeFile(t, keyFile, keyPEM)
	apiPort, adminPort := freePort(t), freePort(t)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":           fmt.Sprintf("127.0.0.1:%d", apiPort),
		"managementListenAddress": fmt.Sprintf("127.0.0.1:%d", adminPort),
		"certificate":             certFile,
		"privateKey":              keyFile,
		"httpPort":                freePort(t), // HTTP-01 and TLS-ALPN-01 are not used
		"tlsPort":                 freePort(t),
		"ocspResponderURL":        "",
		"keyAlgorithm":            "ecdsa",
		"retryAfter":              map[string]int{"authz": 0, "order": 0},
	}}
	b, _ := json.Marshal(cfg)
	writeFile(t, cfgFile, b)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PEBBLE_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"PEBBLE_VA_NOSLEEP=1",      // validate at once
		"PEBBLE_WFE_NONCEREJECT=0", // no deliberately bad nonces
		"PEBBLE_AUTHZREUSE=0",      // every order proves control anew: orders are countable by TXT records
	)
	startProcess(t, env, pebble, "-config", cfgFile, "-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort))

	acmeRoots := x509.NewCertPool()
	acmeRoots.AppendCertsFromPEM(caPEM)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: acmeRoots}}}
	directory := fmt.Sprintf("https://127.0.0.1:%d/dir", apiPort)
	waitFor(t, "pebble", func() error {
		resp, err := client.Get(directory)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", directory, resp.Status)
		}
		return nil
	})

	// The root Pebble issues under, from its management interface.
	resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/roots/0", adminPort))
	if err != nil {
		t.Fatalf("fetch Pebble's root: %v", err)
	}
	rootPEM, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	issuedRoots := x509.NewCertPool()
	if err != nil || resp.StatusCode != http.StatusOK || !issuedRoots.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("fetch Pebble's root: %s, %v: %q", resp.Status, err, rootPEM)
	}

	return &Env{
		Domain:       domain,
		Directory:    directory,
		ACMERoots:    acmeRoots,
		ACMERootsPEM: caPEM,
		IssuedRoots:  issuedRoots,
		DNS:          ctDNS,
		Resolver:     startZoneResolver(t, domain, fmt.Sprintf("127.0.0.1:%d", dnsPort)),
	}
}

func writeFile(t testing.TB, name string, b []byte) {
	t.Helper()
	if err := os.WriteFile(name, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// makeListenerCert makes a CA and, under it, a certificate for 127.0.0.1
// for Pebble's listeners.
func makeListenerCert(t testing.TB) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "certs test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "pebble"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

// ChalltestDNS is a libdns provider backed by pebble-challtestsrv's
// management API (/set-txt, /clear-txt). challtestsrv clears every TXT
// value of a name at once, so the provider remembers what it set and puts
// the other values back: deleting one challenge's record must not delete
// another's (a wildcard and its apex share _acme-challenge.<domain>).
type ChalltestDNS struct {
	mgmt string // http://host:port of the management API

	mu       sync.Mutex
	txt      map[string][]string // fqdn → values set
	appended int
}

// Appended counts the TXT records ever added: with authorization reuse
// off, one per authorization, so one per name per order.
func (p *ChalltestDNS) Appended() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.appended
}

func (p *ChalltestDNS) AppendRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.txt == nil {
		p.txt = make(map[string][]string)
	}
	var out []libdns.Record
	for _, rec := range recs {
		rr := rec.RR()
		if rr.Type != "TXT" {
			return out, fmt.Errorf("challtestsrv provider: %s records are not supported", rr.Type)
		}
		fqdn := libdns.AbsoluteName(rr.Name, zone)
		if err := p.post(ctx, "/set-txt", map[string]string{"host": fqdn, "value": rr.Data}); err != nil {
			return out, err
		}
		p.txt[fqdn] = append(p.txt[fqdn], rr.Data)
		p.appended++
		out = append(out, libdns.TXT{Name: rr.Name, TTL: rr.TTL, Text: rr.Data})
	}
	return out, nil
}

func (p *ChalltestDNS) DeleteRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []libdns.Record
	for _, rec := range recs {
		rr := rec.RR()
		fqdn := libdns.AbsoluteName(rr.Name, zone)
		values := p.txt[fqdn]
		var kept []string
		for _, v := range values {
			if v != rr.Data && rr.Data != "" {
				kept = append(kept, v)
			}
		}
		if len(kept) == len(values) {
			continue // not ours
		}
		if err := p.post(ctx, "/clear-txt", map[string]string{"host": fqdn}); err != nil {
			return out, err
		}
		for _, v := range kept {
			if err := p.post(ctx, "/set-txt", map[string]string{"host": fqdn, "value": v}); err != nil {
				return out, err
			}
		}
		p.txt[fqdn] = kept
		out = append(out, libdns.TXT{Name: rr.Name, TTL: rr.TTL, Text: rr.Data})
	}
	return out, nil
}

func (p *ChalltestDNS) post(ctx context.Context, path string, body map[string]string) error {
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.mgmt+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("challtestsrv %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("challtestsrv %s: %s %s", path, resp.Status, msg)
	}
	return nil
}

// startZoneResolver serves DNS on a loopback UDP port: the SOA of zone,
// which certmagic asks for to learn which zone to put the TXT record in
// (challtestsrv answers no SOA queries), and everything else from
// challtestsrv, where certmagic's propagation check then finds the record.
func startZoneResolver(t testing.TB, zone, upstream string) string {
	t.Helper()
	zone = dns.Fqdn(zone)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		soa := &dns.SOA{
			Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60},
			Ns:  "ns." + zone, Mbox: "hostmaster." + zone, Serial: 1, Refresh: 60, Retry: 60, Expire: 60, Minttl: 1,
		}
		switch {
		case q.Qtype == dns.TypeSOA && strings.EqualFold(q.Name, zone):
			m.Authoritative = true
			m.Answer = append(m.Answer, soa)
		case q.Qtype == dns.TypeSOA && dns.IsSubDomain(zone, strings.ToLower(q.Name)):
			m.Authoritative = true
			m.Ns = append(m.Ns, soa) // no data: the zone starts higher up
		case q.Qtype == dns.TypeSOA:
			m.Rcode = dns.RcodeNameError
		default:
			in, err := dns.Exchange(r, upstream)
			if err != nil {
				m.Rcode = dns.RcodeServerFailure
				break
			}
			m = in
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}
