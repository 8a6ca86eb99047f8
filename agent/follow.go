package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stagely-dev/stagely/agent/containers"
	"github.com/stagely-dev/stagely/agent/logs"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// ErrNotDeployed: the engine has not deployed the environment in this
// process, so it does not know which secrets to mask.
var ErrNotDeployed = errors.New("environment not deployed by this engine")

// FollowLogs reports the output of the environment's containers as run log
// lines, masked with the secrets of its latest deployment, and each
// container death, restart, out-of-memory kill and health change as an
// agent line, until ctx ends. It picks up containers a redeploy creates.
// It refuses (ErrNotDeployed) before a Deploy of the environment in this
// process.
func (e *Engine) FollowLogs(ctx context.Context, env string, r Reporter) error {
	if _, ok := e.masker(env); !ok {
		return fmt.Errorf("follow logs of %s: %w", env, ErrNotDeployed)
	}
	project := ProjectName(env)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 2)
	go func() {
		errs <- e.cfg.Docker.FollowLogs(ctx, project, func(c containers.Container) containers.LogTarget {
			m, _ := e.masker(env) // the masker of the deployment that started c
			emit := func(line string) {
				r.Log(protocol.LogLine{Time: time.Now(), Stream: protocol.StreamRun, Service: c.Service, Text: line})
			}
			out, errOut := logs.NewLineWriter(m, emit), logs.NewLineWriter(m, emit)
			return containers.LogTarget{Stdout: out, Stderr: errOut, Done: func() { out.Flush(); errOut.Flush() }}
		})
	}()
	go func() {
		errs <- e.cfg.Docker.Watch(ctx, project, func(ev containers.Event) {
			r.Log(protocol.LogLine{Time: ev.Time, Stream: protocol.StreamAgent, Service: ev.Service, Text: ev.String()})
		})
	}()
	err := <-errs
	cancel()
	if err2 := <-errs; err == nil {
		err = err2
	}
	if err != nil {
		return fmt.Errorf("environment %s: %w", env, err)
	}
	return nil
}
