package app_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-github/v60/github"
	"github.com/rs/zerolog"

	"github.com/stagely-dev/stagely/app"
	"github.com/stagely-dev/stagely/kv"
	"github.com/stagely-dev/stagely/store"
	"github.com/stagely-dev/stagely/store/storetest"
)

// The intake's speed goal on a 2-core machine: sustained throughput of
// signed, persisted deliveries and the 99th percentile of the time GitHub
// waits for the acknowledgement.
const (
	goalThroughput = 1000.0 // deliveries/s, at least
	goalP99Millis  = 50.0   // ms, below
)

// The load: benchDeliveries pull_request.synchronize deliveries from
// benchClients concurrent keep-alive connections, spread over
// benchRepos repositories (of benchInstallations installations) with
// benchPRsPerRepo pull requests each. Delivery i goes to pull request
// i mod (benchRepos*benchPRsPerRepo) with a new head SHA and a later
// updated_at than that pull request's previous delivery, so every one
// changes the environment's desired state. Deliveries of one pull request
// are a few thousand sends apart, so they arrive in order.
const (
	benchDeliveries    = 12000
	benchClients       = 48
	benchInstallations = 10
	benchRepos         = 100
	benchPRsPerRepo    = 20
	benchSecret        = "bench-webhook-secret-0123456789"
	// The production server's pool (cmd/stagely/server.go).
	benchMaxConns = 50
)

// BenchmarkWebhookIntake measures webhook intake throughput and
// acknowledgement latency with persistence, against a baseline measured in
// the same run: a handler that only reads the body and checks the same
// HMAC signature. It prints one JSON object per metric, each with the
// value, the baseline and their ratio. Run it once:
//
//	go test -run '^$' -bench WebhookIntake -benchtime 1x ./app/
//
// It never fails for being slow; the goal check is one of its lines.
func BenchmarkWebhookIntake(b *testing.B) {
	ctx := context.Background()
	load := newBenchLoad(b)

	// The baseline: HTTP on loopback, reading the body under the same limit
	// and checking the signature, nothing else.
	floor := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, app.MaxBody))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := github.ValidateSignature(r.Header.Get(github.SHA256SignatureHeader), body, []byte(benchSecret)); err != nil {
			http.Error(w, "signature does not match", http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer floor.Close()

	// The intake as the server runs it: the production pool size and an
	// info-level request logger in every request's context (go-githubapp
	// logs each event it receives), writing nowhere.
	db, err := store.Open(ctx, storetest.NewURL(b), benchMaxConns)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	log := zerolog.New(io.Discard).Level(zerolog.InfoLevel).With().Timestamp().Logger()
	intake := httptest.NewUnstartedServer(app.NewIntake(&app.Base{DB: db, Wake: kv.NewMemory(), AppID: 1, Logger: log}, benchSecret))
	intake.Config.BaseContext = func(net.Listener) context.Context { return log.WithContext(context.Background()) }
	intake.Start()
	defer intake.Close()

	b.ResetTimer()
	base := load.run(b, floor.URL+app.HookPath)
	got := load.run(b, intake.URL+app.HookPath)
	b.StopTimer()

	// The numbers are for real persisted work: one done delivery row per
	// delivery, and every pull request's environment at its last push.
	var rows, done int
	if err := db.NewRaw(`SELECT count(*), count(*) FILTER (WHERE status = 'done') FROM webhook_deliveries`).Scan(ctx, &rows, &done); err != nil {
		b.Fatal(err)
	}
	if rows != benchDeliveries || done != benchDeliveries {
		b.Fatalf("webhook_deliveries holds %d rows (%d done), want %d done", rows, done, benchDeliveries)
	}
	var envs, generations int
	if err := db.NewRaw(`SELECT count(*), coalesce(sum(desired_generation), 0) FROM environments`).Scan(ctx, &envs, &generations); err != nil {
		b.Fatal(err)
	}
	if prs := benchRepos * benchPRsPerRepo; envs != prs || generations != benchDeliveries {
		b.Fatalf("%d environments with %d desired generations in all, want %d with %d: not every delivery changed its environment",
			envs, generations, prs, benchDeliveries)
	}

	met := got.throughput >= goalThroughput && got.p99 < goalP99Millis
	goal := fmt.Sprintf(">= %.0f deliveries/s and p99 < %.0f ms", goalThroughput, goalP99Millis)
	for _, m := range []benchMetric{
		{Name: "webhook_intake_throughput", Value: got.throughput, Unit: "deliveries/s", Baseline: base.throughput,
			Goal: goalThroughput, GoalMet: ptr(got.throughput >= goalThroughput)},
		{Name: "webhook_ack_latency_p50", Value: got.p50, Unit: "ms", Baseline: base.p50},
		{Name: "webhook_ack_latency_p99", Value: got.p99, Unit: "ms", Baseline: base.p99,
			Goal: goalP99Millis, GoalMet: ptr(got.p99 < goalP99Millis)},
		{Name: "webhook_ack_latency_max", Value: got.max, Unit: "ms", Baseline: base.max},
		{Name: "webhook_intake_goal_met", Value: b2f(met), Unit: "bool", Baseline: 1, Goal: 1, GoalMet: &met, Detail: goal},
	} {
		m.Ratio = 0
		if m.Baseline != 0 {
			m.Ratio = round(m.Value/m.Baseline, 3)
		}
		m.Value, m.Baseline = round(m.Value, 2), round(m.Baseline, 2)
		line, err := json.Marshal(m)
		if err != nil {
			b.Fatal(err)
		}
		fmt.Println(string(line))
	}
	b.ReportMetric(got.throughput, "deliveries/s")
	b.ReportMetric(got.p50, "p50-ms")
	b.ReportMetric(got.p99, "p99-ms")
	b.ReportMetric(base.throughput, "baseline-deliveries/s")
	b.ReportMetric(base.p99, "baseline-p99-ms")
}

// benchMetric is one printed line; the first five keys are on every line.
type benchMetric struct {
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Baseline float64 `json:"baseline"`
	Ratio    float64 `json:"ratio"`
	Goal     float64 `json:"goal,omitempty"`
	GoalMet  *bool   `json:"goal_met,omitempty"`
	Detail   string  `json:"detail,omitempty"`
}

func ptr[T any](v T) *T { return &v }

func b2f(v bool) float64 {
	if v {
		return 1
	}
	return 0
}

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

// benchLoad is the set of deliveries, sent unchanged to each server. The
// bodies are built from a template while sending (all of them would take
// hundreds of MB); their signatures are computed beforehand so that the
// load generator, which shares the machine's cores with the server, does
// as little as it can.
type benchLoad struct {
	tmpl    []byte
	patches []benchPatch
	sigs    []string
}

// benchPatch is a fixed-width placeholder in the template.
type benchPatch struct {
	offsets []int
	value   func(i int) string
}

// The placeholders, each exactly as wide as the values that replace it.
// A number's placeholder is a JSON string whose quotes are replaced too.
const (
	phInstallation = "INSTAL"               // "…": 8 digits, 10000000+installation
	phRepository   = "REPOSIT"              // "…": 9 digits, 100000000+repository
	phPR           = "PR"                   // "…": 4 digits, 1000+pull request
	phName         = "ZZREPONAMEZZ"         // 12: bench-r%05d
	phTime         = "ZZZZUPDATEDATZZZZZZZ" // 20: RFC 3339 in UTC, seconds
)

var phSHA = strings.Repeat("Z", 40) // the head SHA

func deliveryOf(i int) (installation, repository, pr, push int) {
	prs := benchRepos * benchPRsPerRepo
	g := i % prs
	repository = g / benchPRsPerRepo
	return repository % benchInstallations, repository, g % benchPRsPerRepo, i / prs
}

func newBenchLoad(b *testing.B) *benchLoad {
	raw, err := os.ReadFile(filepath.Join("../../shared/testdata/github/webhooks", "pull_request.synchronize.1.json"))
	if err != nil {
		b.Fatalf("recorded payload (the shared test data must be beside the repository): %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var ev map[string]any
	if err := dec.Decode(&ev); err != nil {
		b.Fatal(err)
	}
	obj := func(m map[string]any, path ...string) map[string]any {
		for _, k := range path {
			next, ok := m[k].(map[string]any)
			if !ok {
				b.Fatalf("recorded payload has no object %v", path)
			}
			m = next
		}
		return m
	}
	obj(ev, "installation")["id"] = phInstallation
	ev["number"] = phPR
	ev["after"] = phSHA
	pr := obj(ev, "pull_request")
	pr["number"] = phPR
	pr["updated_at"] = phTime
	obj(pr, "head")["sha"] = phSHA
	for _, repo := range []map[string]any{obj(ev, "repository"), obj(pr, "head", "repo"), obj(pr, "base", "repo")} {
		repo["id"] = phRepository
		repo["name"] = phName
		repo["full_name"] = obj(repo, "owner")["login"].(string) + "/" + phName
	}
	// Compact, as GitHub sends it.
	tmpl, err := json.Marshal(ev)
	if err != nil {
		b.Fatal(err)
	}

	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := &benchLoad{tmpl: tmpl}
	for _, p := range []struct {
		placeholder string
		value       func(i int) string
	}{
		{strconv.Quote(phInstallation), func(i int) string { in, _, _, _ := deliveryOf(i); return strconv.Itoa(10000000 + in) }},
		{strconv.Quote(phRepository), func(i int) string { _, r, _, _ := deliveryOf(i); return strconv.Itoa(100000000 + r) }},
		{strconv.Quote(phPR), func(i int) string { _, _, n, _ := deliveryOf(i); return strconv.Itoa(1000 + n) }},
		{phName, func(i int) string { _, r, _, _ := deliveryOf(i); return fmt.Sprintf("bench-r%05d", r) }}, // in full_name too
		{strconv.Quote(phSHA), func(i int) string { return fmt.Sprintf(`"%040x"`, uint64(i+1)*0x9e3779b97f4a7c15) }},
		{strconv.Quote(phTime), func(i int) string {
			_, _, _, push := deliveryOf(i)
			return start.Add(time.Duration(push) * time.Minute).Format(`"2006-01-02T15:04:05Z"`)
		}},
	} {
		var offsets []int
		for at := 0; ; {
			j := bytes.Index(tmpl[at:], []byte(p.placeholder))
			if j < 0 {
				break
			}
			offsets = append(offsets, at+j)
			at += j + len(p.placeholder)
		}
		if len(offsets) == 0 {
			b.Fatalf("placeholder %s not in the template", p.placeholder)
		}
		if v := p.value(benchDeliveries - 1); len(v) != len(p.placeholder) {
			b.Fatalf("value %q does not fit placeholder %q", v, p.placeholder)
		}
		l.patches = append(l.patches, benchPatch{offsets: offsets, value: p.value})
	}

	l.sigs = make([]string, benchDeliveries)
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := range workers {
		wg.Go(func() {
			buf := make([]byte, len(tmpl))
			m := hmac.New(sha256.New, []byte(benchSecret))
			for i := w; i < benchDeliveries; i += workers {
				m.Reset()
				m.Write(l.body(buf, i))
				l.sigs[i] = "sha256=" + hex.EncodeToString(m.Sum(nil))
			}
		})
	}
	wg.Wait()
	return l
}

// body writes delivery i's payload into buf, which is len(l.tmpl) long.
func (l *benchLoad) body(buf []byte, i int) []byte {
	copy(buf, l.tmpl)
	for _, p := range l.patches {
		v := p.value(i)
		for _, at := range p.offsets {
			copy(buf[at:], v)
		}
	}
	return buf
}

type benchResult struct {
	throughput    float64 // deliveries/s
	p50, p99, max float64 // ms
}

// run sends every delivery to url from benchClients concurrent keep-alive
// connections and fails unless every one is answered 200.
func (l *benchLoad) run(b *testing.B, url string) benchResult {
	tr := &http.Transport{
		MaxIdleConns:        benchClients,
		MaxIdleConnsPerHost: benchClients,
		MaxConnsPerHost:     benchClients,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: time.Minute}
	latency := make([]time.Duration, benchDeliveries)
	var next atomic.Int64
	var failed atomic.Int64
	var firstErr error
	var once sync.Once
	fail := func(err error) {
		failed.Add(1)
		once.Do(func() { firstErr = err })
	}
	var wg sync.WaitGroup
	start := time.Now()
	for range benchClients {
		wg.Go(func() {
			buf := make([]byte, len(l.tmpl))
			for {
				i := int(next.Add(1) - 1)
				if i >= benchDeliveries || failed.Load() > 0 {
					return
				}
				req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(l.body(buf, i)))
				if err != nil {
					fail(err)
					return
				}
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("User-Agent", "GitHub-Hookshot/bench")
				req.Header.Set(github.EventTypeHeader, "pull_request")
				req.Header.Set(github.DeliveryIDHeader, fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i))
				req.Header.Set(github.SHA256SignatureHeader, l.sigs[i])
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					fail(err)
					return
				}
				msg, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				latency[i] = time.Since(t0)
				if err != nil {
					fail(err)
					return
				}
				if resp.StatusCode != http.StatusOK {
					fail(fmt.Errorf("delivery %d: %s: %s", i, resp.Status, bytes.TrimSpace(msg)))
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if n := failed.Load(); n > 0 {
		b.Fatalf("%s: %d deliveries failed; first: %v", url, n, firstErr)
	}
	slices.Sort(latency)
	ms := func(q float64) float64 {
		return float64(latency[int(math.Ceil(q*float64(len(latency))))-1]) / float64(time.Millisecond)
	}
	r := benchResult{
		throughput: float64(benchDeliveries) / elapsed.Seconds(),
		p50:        ms(0.50),
		p99:        ms(0.99),
		max:        ms(1),
	}
	b.Logf("%s: %d deliveries in %v: %.0f/s, p50 %.2f ms, p99 %.2f ms, max %.2f ms",
		url, benchDeliveries, elapsed.Round(time.Millisecond), r.throughput, r.p50, r.p99, r.max)
	return r
}
