package agent_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/agent"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// flakySource is the in-memory server whose source streams break off:
// the first cuts calls get half the archive and then lose their
// connection, as when the server is killed mid-stream; or the calls fail
// with fail.
type flakySource struct {
	*server
	mu    sync.Mutex
	calls int
	cuts  int
	fail  error
}

func (f *flakySource) Source(ctx context.Context, id protocol.Identity, req protocol.SourceRequest) (protocol.SourceInfo, io.ReadCloser, error) {
	f.mu.Lock()
	f.calls++
	call, fail := f.calls, f.fail
	f.mu.Unlock()
	if fail != nil {
		return protocol.SourceInfo{}, nil, fail
	}
	info, body, err := f.server.Source(ctx, id, req)
	if err != nil || call > f.cuts {
		return info, body, err
	}
	all, _ := io.ReadAll(body)
	conn := ctx.Value(pipeKey{}).(net.Conn)
	return info, io.NopCloser(io.MultiReader(bytes.NewReader(all[:len(all)/2]), cutReader{conn})), nil
}

// cutReader drops the connection when the stream reaches it.
type cutReader struct{ c net.Conn }

func (r cutReader) Read([]byte) (int, error) {
	r.c.Close()
	return 0, io.ErrClosedPipe
}

func TestSourceIsFetchedAgainWhenItsStreamBreaksOff(t *testing.T) {
	d := connect(t)
	cases := []struct {
		name      string
		cuts      int
		fail      error
		succeeded bool
		calls     int
	}{
		{name: "cut off twice, then whole", cuts: 2, succeeded: true, calls: 3},
		{name: "no such source", fail: protocol.ErrNotFound, calls: 1},
		{name: "refused", fail: protocol.ErrUnauthorized, calls: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			work := t.TempDir()
			e, err := agent.New(context.Background(), agent.Config{WorkDir: work, Docker: d})
			if err != nil {
				t.Fatal(err)
			}
			env := uniqueEnv(t, d, "src")
			srv := &flakySource{server: newServer(), cuts: tc.cuts, fail: tc.fail}
			runAgent(t, e, srv)

			// No compose file: the deploy stops at the step after the
			// source, quickly and for a reason of its own.
			dir := t.TempDir()
			if err := os.WriteFile(dir+"/README", []byte("no compose file here\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			srv.publish(deployment(env, 1, nil), tarball(t, dir))
			srv.waitFor(t, "the source step", time.Minute, func(steps []protocol.StepReport, _ []protocol.LogLine) bool {
				_, ok := stepDone(steps, 1, agent.StepSource)
				return ok
			})

			srv.mu.Lock()
			defer srv.mu.Unlock()
			var reports []protocol.StepReport
			for _, s := range srv.steps {
				if s.Name == agent.StepSource && s.State != protocol.StepRunning {
					reports = append(reports, s)
				}
			}
			if len(reports) != 1 {
				t.Fatalf("source step finished %d times: %+v", len(reports), reports)
			}
			if got := reports[0].State == protocol.StepSucceeded; got != tc.succeeded {
				t.Errorf("source step %s (%s), want succeeded=%v", reports[0].State, reports[0].Message, tc.succeeded)
			}
			if srv.calls != tc.calls {
				t.Errorf("%d source calls, want %d", srv.calls, tc.calls)
			}
			if spooled, _ := filepath.Glob(filepath.Join(work, "source-*")); len(spooled) != 0 {
				t.Errorf("spooled archives left: %v", spooled)
			}
		})
	}
}
