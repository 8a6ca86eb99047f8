package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types"

	"github.com/stagely-dev/stagely/agent"
	"github.com/stagely-dev/stagely/agent/containers"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// buildCacheSize is what the engine's build cache holds as BuildKit
// counts it when it prunes: the records no image shares, here only those
// created by the time given.
func buildCacheSize(tb testing.TB, d *containers.Docker, by time.Time) int64 {
	tb.Helper()
	du, err := d.API().DiskUsage(context.Background(), types.DiskUsageOptions{Types: []types.DiskUsageObject{types.BuildCacheObject}})
	if err != nil {
		tb.Fatal(err)
	}
	var n int64
	for _, r := range du.BuildCache {
		if !r.Shared && !r.CreatedAt.After(by) {
			n += r.Size
		}
	}
	return n
}

// TestRedeploysKeepTheBuildCacheWithinItsBound pushes changes that make
// every layer new, each push leaving some 12 MiB of cache, and checks
// that after the last deploy the engine's build cache is within the bound.
//
// The engine may be shared, and its cache with it: BuildKit's records do
// not name the project that made them, so the test cannot tell its own
// apart. The bound is what the cache held when the test began plus a
// margin smaller than one push's worth: others' records count as they
// would on a machine, and the agent's prune takes from them at most what
// this test added. Records created after the last build's output ended
// are left out of the measure: another build may add them after the
// prune ran.
func TestRedeploysKeepTheBuildCacheWithinItsBound(t *testing.T) {
	ctx := context.Background()
	d := connect(t)
	const margin = 8 << 20
	limit := buildCacheSize(t, d, time.Now()) + margin
	e, err := agent.New(ctx, agent.Config{WorkDir: filepath.Join(t.TempDir(), "work"), Docker: d, MaxBuildCache: limit})
	if err != nil {
		t.Fatal(err)
	}
	env := uniqueEnv(t, d, "cache")
	dir := t.TempDir()
	var (
		trimmed []string
		built   time.Time
	)
	const pushes = 4
	for gen := int64(1); gen <= pushes; gen++ {
		// A new nonce is the first step of both Dockerfiles: every layer
		// after it is built again, as for a change to a lockfile. Each
		// service has its own, or they would share their layers.
		writeApp(t, dir, "hello", appOptions{nonce: fmt.Sprintf("%s push %d", env, gen)})
		if err := os.WriteFile(filepath.Join(dir, "web", "nonce.txt"), fmt.Appendf(nil, "%s push %d of web", env, gen), 0o644); err != nil {
			t.Fatal(err)
		}
		rec := &agent.Recorder{}
		if _, err := e.Deploy(ctx, deployment(env, gen, nil), agent.Source{Body: bytes.NewReader(tarball(t, dir)), StripTopLevel: true}, rec); err != nil {
			t.Fatal(err)
		}
		for _, l := range rec.Lines() {
			switch {
			case l.Stream == protocol.StreamBuild:
				built = l.Time
			case strings.Contains(l.Text, "build cache"):
				trimmed = append(trimmed, l.Text)
			}
		}
	}
	if got := buildCacheSize(t, d, built); got > limit {
		t.Errorf("after %d pushes the build cache holds %d bytes, %.1f MiB over its bound of %d", pushes, got, float64(got-limit)/(1<<20), limit)
	}
	if !strings.Contains(strings.Join(trimmed, "\n"), "trimmed the build cache") {
		t.Errorf("no deploy said it trimmed the build cache (%q)", trimmed)
	}
	t.Logf("bound %d bytes; the agent said: %s", limit, strings.Join(trimmed, "; "))
}
