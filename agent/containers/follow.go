package containers

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/pkg/stdcopy"
)

// LogTarget receives one container's output.
type LogTarget struct {
	Stdout, Stderr io.Writer
	// Done, if set, is called when the container's output ends (it
	// stopped, or following ended).
	Done func()
}

// FollowLogs streams the output of the project's running containers, and
// of every container of it that starts later, to the targets open returns
// (one call per container start), until ctx ends. It returns nil then, or
// the error that broke the engine's event stream.
func (d *Docker) FollowLogs(ctx context.Context, project string, open func(Container) LogTarget) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	// Subscribe before listing, so no start falls between the two.
	msgs, errs := d.api.Events(ctx, events.ListOptions{Filters: projectFilter(project,
		filters.Arg("type", string(events.ContainerEventType)), filters.Arg("event", string(events.ActionStart)))})

	var mu sync.Mutex
	following := map[string]bool{}
	follow := func(id string, since time.Time) {
		mu.Lock()
		defer mu.Unlock()
		if following[id] {
			return
		}
		following[id] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				mu.Lock()
				delete(following, id)
				mu.Unlock()
			}()
			d.copyLogs(ctx, id, since, open)
		}()
	}

	running, err := d.api.ContainerList(ctx, container.ListOptions{Filters: projectFilter(project, filters.Arg("status", "running"))})
	if err != nil {
		return fmt.Errorf("follow logs of %s: %w", project, err)
	}
	for _, c := range running {
		follow(c.ID, time.Time{})
	}
	for {
		select {
		case m := <-msgs:
			follow(m.Actor.ID, time.Unix(0, m.TimeNano))
		case err := <-errs:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("follow logs of %s: events: %w", project, err)
		case <-ctx.Done():
			return nil
		}
	}
}

func (d *Docker) copyLogs(ctx context.Context, id string, since time.Time, open func(Container) LogTarget) {
	c, err := d.inspect(ctx, id)
	if err != nil {
		return // gone already
	}
	t := open(c)
	if t.Done != nil {
		defer t.Done()
	}
	opts := container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: true}
	if !since.IsZero() {
		opts.Since = fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond())
	}
	rc, err := d.api.ContainerLogs(ctx, id, opts)
	if err != nil {
		return
	}
	defer rc.Close()
	if c.tty {
		_, _ = io.Copy(t.Stdout, rc)
		return
	}
	_, _ = stdcopy.StdCopy(t.Stdout, t.Stderr, rc)
}

// Event is a change of one container's life that a person should hear of.
type Event struct {
	Time      time.Time
	Container string
	Service   string
	// What happened: "died", "restarted", "out of memory", "healthy",
	// "unhealthy".
	What string
	// ExitCode is set when What is "died".
	ExitCode string
}

// String says it in a sentence.
func (e Event) String() string {
	if e.What == "died" {
		return fmt.Sprintf("container %s exited with code %s", e.Container, e.ExitCode)
	}
	return fmt.Sprintf("container %s: %s", e.Container, e.What)
}

// Watch calls fn for each death, restart, out-of-memory kill and health
// change of the project's containers until ctx ends. It returns nil then,
// or the error that broke the engine's event stream.
func (d *Docker) Watch(ctx context.Context, project string, fn func(Event)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	msgs, errs := d.api.Events(ctx, events.ListOptions{Filters: projectFilter(project,
		filters.Arg("type", string(events.ContainerEventType)))})
	for {
		select {
		case m := <-msgs:
			e := Event{
				Time:      time.Unix(0, m.TimeNano),
				Container: m.Actor.Attributes["name"],
				Service:   m.Actor.Attributes[LabelService],
			}
			switch a := string(m.Action); {
			case a == string(events.ActionDie):
				e.What, e.ExitCode = "died", m.Actor.Attributes["exitCode"]
			case a == string(events.ActionRestart):
				e.What = "restarted"
			case a == string(events.ActionOOM):
				e.What = "out of memory"
			case strings.HasPrefix(a, "health_status: "):
				e.What = strings.TrimPrefix(a, "health_status: ")
			default:
				continue
			}
			fn(e)
		case err := <-errs:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("watch %s: events: %w", project, err)
		case <-ctx.Done():
			return nil
		}
	}
}
