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
	"runtime/debug"
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

// The intake's speed goal on a 2-core machine: at least goalRate signed
// deliveries a second, each persisted before it is acknowledged, with the
// 99th percentile of the time GitHub waits for the acknowledgement under
// goalP99Millis while that rate is offered.
const (
	goalRate      = 1000.0 // deliveries/s
	goalP99Millis = 50.0   // ms
)

// The load is pull_request.synchronize deliveries, each with its own
// X-GitHub-Delivery, spread over benchRepos repositories (of
// benchInstallations installations) with benchPRsPerRepo pull requests
// each. Delivery i goes to pull request i mod benchPRs with a new head SHA
// and a later updated_at than that pull request's previous delivery, so
// every one changes an environment's desired state. The deliveries of one
// pull request are benchPRs sends apart, so they arrive in order.
//
// It comes in two phases, each sent to the baseline and to the intake:
//   - saturated: benchSaturated deliveries from benchClients keep-alive
//     connections, each sending its next delivery as soon as the previous
//     one is acknowledged: the most the server can take;
//   - paced: benchPaced deliveries offered at goalRate (open loop: each is
//     due at a fixed time, and its latency counts from then, so a server
//     that falls behind is charged for the queue it builds) over at most
//     benchPacedConns connections: the latency the goal speaks of.
const (
	benchInstallations = 10
	benchRepos         = 100
	benchPRsPerRepo    = 20
	benchPRs           = benchRepos * benchPRsPerRepo
	benchSaturated     = 6000
	benchClients       = 48
	benchPaced         = 5000 // 5 s at goalRate
	benchPacedConns    = 64
	benchDeliveries    = benchSaturated + benchPaced
	benchSecret        = "bench-webhook-secret-0123456789"
	// The production server's pool (cmd/stagely/server.go).
	benchMaxConns = 50
	// The production server's --gc-percent default (cmd/stagely/server.go).
	serverGCPercent = 400
)

// BenchmarkWebhookIntake measures webhook intake throughput and
// acknowledgement latency with persistence, against a baseline measured in
// the same run: a handler that only reads the body under the same limit
// and checks the same HMAC signature, the floor that HTTP on loopback and
// signing set on this machine. It prints one JSON object a metric, each
// with the value, the baseline and their ratio, and one for the goal. Run
// it once:
//
//	go test -run '^$' -bench WebhookIntake -benchtime 1x ./app/
//
// A slow machine never fails it: whether the goal is met is printed. It
// fails only if a delivery is not acknowledged with 200 or is not in the
// database afterwards.
func BenchmarkWebhookIntake(b *testing.B) {
	ctx := context.Background()
	// The GC target the server runs with (its --gc-percent default).
	defer debug.SetGCPercent(debug.SetGCPercent(serverGCPercent))
	load := newBenchLoad(b)

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

	// The intake as the server runs it: the production pool size, and an
	// info-level logger in every request's context (go-githubapp logs each
	// event it receives) that writes nowhere.
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

	saturated := benchPhase{from: 0, n: benchSaturated, conns: benchClients}
	paced := benchPhase{from: benchSaturated, n: benchPaced, conns: benchPacedConns, rate: goalRate}
	b.ResetTimer()
	baseSat := load.run(b, "baseline", floor.URL+app.HookPath, saturated)
	basePaced := load.run(b, "baseline", floor.URL+app.HookPath, paced)
	gotSat := load.run(b, "intake", intake.URL+app.HookPath, saturated)
	gotPaced := load.run(b, "intake", intake.URL+app.HookPath, paced)
	b.StopTimer()

	// The numbers are for real persisted work: one done delivery row a
	// delivery, and each delivery a new desired state of its environment.
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
	if envs != benchPRs || generations != benchDeliveries {
		b.Fatalf("%d environments with %d desired generations in all, want %d with %d: not every delivery changed its environment",
			envs, generations, benchPRs, benchDeliveries)
	}

	atGoal := fmt.Sprintf("%.0f deliveries/s offered, at most %d connections", goalRate, benchPacedConns)
	atMost := fmt.Sprintf("%d connections sending back to back", benchClients)
	rateMet := gotSat.rate >= goalRate
	p99Met := gotPaced.p99 < goalP99Millis
	met := rateMet && p99Met
	printBenchMetrics(b,
		benchMetric{Name: "webhook_intake_throughput", Value: gotSat.rate, Unit: "deliveries/s", Baseline: baseSat.rate,
			Load: atMost, Goal: goalRate, GoalMet: &rateMet},
		benchMetric{Name: "webhook_ack_latency_p50", Value: gotPaced.p50, Unit: "ms", Baseline: basePaced.p50, Load: atGoal},
		benchMetric{Name: "webhook_ack_latency_p99", Value: gotPaced.p99, Unit: "ms", Baseline: basePaced.p99, Load: atGoal,
			Goal: goalP99Millis, GoalMet: &p99Met},
		benchMetric{Name: "webhook_intake_sustained_rate", Value: gotPaced.rate, Unit: "deliveries/s", Baseline: basePaced.rate, Load: atGoal},
		benchMetric{Name: "webhook_ack_latency_p99_saturated", Value: gotSat.p99, Unit: "ms", Baseline: baseSat.p99, Load: atMost},
		benchMetric{Name: "webhook_intake_goal_met", Value: b2f(met), Unit: "bool", Baseline: 1, GoalMet: &met,
			Detail: fmt.Sprintf("throughput >= %.0f deliveries/s and p99 < %.0f ms at %s", goalRate, goalP99Millis, atGoal)},
	)
	b.ReportMetric(gotSat.rate, "deliveries/s")
	b.ReportMetric(gotPaced.p50, "p50-ms")
	b.ReportMetric(gotPaced.p99, "p99-ms")
	b.ReportMetric(baseSat.rate, "baseline-deliveries/s")
	b.ReportMetric(basePaced.p99, "baseline-p99-ms")
}

// benchMetric is one printed line; the first five keys are on every line.
type benchMetric struct {
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Baseline float64 `json:"baseline"`
	Ratio    float64 `json:"ratio"`
	Load     string  `json:"load,omitempty"`
	Goal     float64 `json:"goal,omitempty"`
	GoalMet  *bool   `json:"goal_met,omitempty"`
	Detail   string  `json:"detail,omitempty"`
}

// printBenchMetrics writes one JSON object a line to standard output.
// The first starts a line of its own: go test prints the benchmark's name
// before running it, without a newline.
func printBenchMetrics(b *testing.B, ms ...benchMetric) {
	var out bytes.Buffer
	out.WriteByte('\n')
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	for _, m := range ms {
		if m.Baseline != 0 {
			m.Ratio = round(m.Value/m.Baseline, 3)
		}
		m.Value, m.Baseline = round(m.Value, 2), round(m.Baseline, 2)
		if err := enc.Encode(m); err != nil {
			b.Fatal(err)
		}
	}
	fmt.Print(out.String())
}

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

// benchLoad is the deliveries, sent alike to each server. Their bodies are
// built from a template while sending (all of them would take hundreds of
// MB); their signatures are computed beforehand, so that the load
// generator, which shares the machine's cores with the server, does as
// little as it can.
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

// The placeholders, each exactly as wide as the values that replace it. A
// number's placeholder is a JSON string whose quotes are replaced too.
const (
	phInstallation = "INSTAL"               // 8 digits: 10000000+installation
	phRepository   = "REPOSIT"              // 9 digits: 100000000+repository
	phPR           = "PR"                   // 4 digits: 1000+pull request
	phName         = "ZZREPONAMEZZ"         // bench-r%05d, in full_name too
	phTime         = "ZZZZUPDATEDATZZZZZZZ" // RFC 3339 in UTC, to the second
)

var phSHA = strings.Repeat("Z", 40) // the head SHA

// deliveryOf tells whose delivery i is, and how many of that pull
// request's deliveries came before it.
func deliveryOf(i int) (installation, repository, pr, push int) {
	g := i % benchPRs
	repository = g / benchPRsPerRepo
	return repository % benchInstallations, repository, g % benchPRsPerRepo, i / benchPRs
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
	tmpl, err := json.Marshal(ev) // compact, as GitHub sends it
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
		{phName, func(i int) string { _, r, _, _ := deliveryOf(i); return fmt.Sprintf("bench-r%05d", r) }},
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
			b.Fatalf("placeholder %s is not in the template", p.placeholder)
		}
		for _, i := range []int{0, benchDeliveries - 1} {
			if v := p.value(i); len(v) != len(p.placeholder) {
				b.Fatalf("value %s does not fit placeholder %s", v, p.placeholder)
			}
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

// benchPhase is deliveries from to from+n-1, sent over at most conns
// connections: back to back when rate is 0, else each due at
// start + (i-from)/rate.
type benchPhase struct {
	from, n, conns int
	rate           float64
}

type benchResult struct {
	rate     float64 // deliveries acknowledged a second
	p50, p99 float64 // ms
}

// run sends phase ph's deliveries to url and fails unless every one is
// acknowledged with 200.
func (l *benchLoad) run(b *testing.B, name, url string, ph benchPhase) benchResult {
	tr := &http.Transport{
		MaxIdleConns:        ph.conns,
		MaxIdleConnsPerHost: ph.conns,
		MaxConnsPerHost:     ph.conns,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: time.Minute}
	post := func(buf []byte, i int) error {
		req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(l.body(buf, i)))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "GitHub-Hookshot/bench")
		req.Header.Set(github.EventTypeHeader, "pull_request")
		req.Header.Set(github.DeliveryIDHeader, fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i))
		req.Header.Set(github.SHA256SignatureHeader, l.sigs[i])
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		msg, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("delivery %d: %s: %s", i, resp.Status, bytes.TrimSpace(msg))
		}
		return nil
	}

	latency := make([]time.Duration, ph.n)
	var failed atomic.Int64
	var firstErr error
	var once sync.Once
	fail := func(err error) {
		failed.Add(1)
		once.Do(func() { firstErr = err })
	}
	// Each worker takes the next delivery and when it was due.
	next := func() func() (int, time.Time, bool) {
		var n atomic.Int64
		return func() (int, time.Time, bool) {
			k := int(n.Add(1) - 1)
			return k, time.Now(), k < ph.n
		}
	}()
	start := time.Now()
	if ph.rate > 0 {
		due := make(chan int, ph.n)
		go func() {
			defer close(due)
			for k := range ph.n {
				if wait := time.Until(dueAt(start, k, ph.rate)); wait > 0 {
					time.Sleep(wait)
				}
				due <- k
			}
		}()
		next = func() (int, time.Time, bool) {
			k, ok := <-due
			return k, dueAt(start, k, ph.rate), ok
		}
	}
	var wg sync.WaitGroup
	ends := make([]time.Time, ph.n)
	for range ph.conns {
		wg.Go(func() {
			buf := make([]byte, len(l.tmpl))
			for failed.Load() == 0 {
				k, t0, ok := next()
				if !ok {
					return
				}
				if err := post(buf, ph.from+k); err != nil {
					fail(err)
					return
				}
				ends[k] = time.Now()
				latency[k] = ends[k].Sub(t0)
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%s: %d deliveries failed; first: %v", name, n, firstErr)
	}
	elapsed := slices.MaxFunc(ends, time.Time.Compare).Sub(start)
	slices.Sort(latency)
	ms := func(q float64) float64 {
		return float64(latency[int(math.Ceil(q*float64(len(latency))))-1]) / float64(time.Millisecond)
	}
	r := benchResult{rate: float64(ph.n) / elapsed.Seconds(), p50: ms(0.50), p99: ms(0.99)}
	mode := "back to back"
	if ph.rate > 0 {
		mode = fmt.Sprintf("offered at %.0f/s", ph.rate)
	}
	b.Logf("%s: %d deliveries %s over %d connections in %v: %.0f/s, p50 %.2f ms, p99 %.2f ms, max %.2f ms",
		name, ph.n, mode, ph.conns, elapsed.Round(time.Millisecond), r.rate, r.p50, r.p99, ms(1))
	return r
}

func dueAt(start time.Time, k int, rate float64) time.Time {
	return start.Add(time.Duration(float64(k) / rate * float64(time.Second)))
}
