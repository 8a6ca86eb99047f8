package containers

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
)

// Container is one container of a project as the engine sees it.
type Container struct {
	ID      string
	Name    string
	Service string
	// Number is Compose's replica number, from 1.
	Number int
	// State is the engine's word: created, running, restarting, exited...
	State string
	// Health is "", starting, healthy or unhealthy.
	Health       string
	StartedAt    time.Time
	RestartCount int
	ExitCode     int
	// Networks maps each network the container is on to its IP there.
	Networks map[string]string
	// Published lists ports bound on the host ("0.0.0.0:32768->8080/tcp").
	Published []string
	// Binds are the host paths of its bind mounts.
	Binds []string

	tty bool
}

// Containers lists the project's containers, stopped ones included, by
// service and replica number.
func (d *Docker) Containers(ctx context.Context, project string) ([]Container, error) {
	list, err := d.api.ContainerList(ctx, container.ListOptions{All: true, Filters: projectFilter(project)})
	if err != nil {
		return nil, fmt.Errorf("list containers of %s: %w", project, err)
	}
	out := make([]Container, 0, len(list))
	for _, s := range list {
		if s.Labels[LabelOneoff] == "True" {
			continue // `compose run` leftovers are not part of the deployment
		}
		c, err := d.inspect(ctx, s.ID)
		if err != nil {
			return nil, fmt.Errorf("containers of %s: %w", project, err)
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		return out[i].Number < out[j].Number
	})
	return out, nil
}

func (d *Docker) inspect(ctx context.Context, id string) (Container, error) {
	in, err := d.api.ContainerInspect(ctx, id)
	if err != nil {
		return Container{}, fmt.Errorf("inspect container %.12s: %w", id, err)
	}
	c := Container{ID: in.ID, Name: strings.TrimPrefix(in.Name, "/"), Networks: map[string]string{}}
	if in.Config != nil {
		c.Service = in.Config.Labels[LabelService]
		c.Number, _ = strconv.Atoi(in.Config.Labels[LabelNumber])
		c.tty = in.Config.Tty
	}
	if in.State != nil {
		c.State = string(in.State.Status)
		c.ExitCode = in.State.ExitCode
		c.StartedAt, _ = time.Parse(time.RFC3339Nano, in.State.StartedAt)
		if in.State.Health != nil {
			c.Health = string(in.State.Health.Status)
		}
	}
	c.RestartCount = in.RestartCount
	for _, m := range in.Mounts {
		if m.Type == mount.TypeBind {
			c.Binds = append(c.Binds, m.Source)
		}
	}
	if in.NetworkSettings != nil {
		for name, ep := range in.NetworkSettings.Networks {
			if ep != nil && ep.IPAddress != "" {
				c.Networks[name] = ep.IPAddress
			}
		}
		for port, bindings := range in.NetworkSettings.Ports {
			for _, b := range bindings {
				c.Published = append(c.Published, net.JoinHostPort(b.HostIP, b.HostPort)+"->"+string(port))
			}
		}
	}
	if in.HostConfig != nil {
		for port, bindings := range in.HostConfig.PortBindings {
			for _, b := range bindings {
				if s := net.JoinHostPort(b.HostIP, b.HostPort) + "->" + string(port); !contains(c.Published, s) {
					c.Published = append(c.Published, s)
				}
			}
		}
	}
	sort.Strings(c.Published)
	return c, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Address returns host:port of a running container of the service on the
// project's network: the default network if the service is on it, else
// the first of the project's networks by name.
func (d *Docker) Address(ctx context.Context, project, service string, port int) (string, error) {
	list, err := d.api.ContainerList(ctx, container.ListOptions{Filters: projectFilter(project,
		filters.Arg("label", LabelService+"="+service), filters.Arg("status", "running"))})
	if err != nil {
		return "", fmt.Errorf("address of %s/%s: %w", project, service, err)
	}
	if len(list) == 0 {
		return "", fmt.Errorf("address of %s/%s: no running container", project, service)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Labels[LabelNumber] < list[j].Labels[LabelNumber] })
	c, err := d.inspect(ctx, list[0].ID)
	if err != nil {
		return "", fmt.Errorf("address of %s/%s: %w", project, service, err)
	}
	return AddressIn([]Container{c}, project, service, port)
}

// AddressIn is Address over a list Containers returned: the lowest-numbered
// running container of the service.
func AddressIn(cs []Container, project, service string, port int) (string, error) {
	for _, c := range cs {
		if c.Service != service || c.State != "running" {
			continue
		}
		ip := pickIP(project, c.Networks)
		if ip == "" {
			return "", fmt.Errorf("address of %s/%s: container %s has no IP on a network of the project", project, service, c.Name)
		}
		return net.JoinHostPort(ip, strconv.Itoa(port)), nil
	}
	return "", fmt.Errorf("address of %s/%s: no running container", project, service)
}

func pickIP(project string, networks map[string]string) string {
	if ip := networks[project+"_default"]; ip != "" {
		return ip
	}
	names := make([]string, 0, len(networks))
	for n := range networks {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if strings.HasPrefix(n, project+"_") {
			return networks[n]
		}
	}
	if len(names) > 0 {
		return networks[names[0]]
	}
	return ""
}

// Restart restarts a container, giving it 10 seconds to stop. A restart
// mounts bind mounts afresh from their host paths.
func (d *Docker) Restart(ctx context.Context, id string) error {
	timeout := 10
	if err := d.api.ContainerRestart(ctx, id, container.StopOptions{Timeout: &timeout}); err != nil {
		return fmt.Errorf("restart container %.12s: %w", id, err)
	}
	return nil
}
