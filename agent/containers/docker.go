package containers

import (
	"context"
	"fmt"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
)

// Labels Compose sets on everything it creates.
const (
	LabelProject = "com.docker.compose.project"
	LabelService = "com.docker.compose.service"
	LabelNumber  = "com.docker.compose.container-number"
	LabelOneoff  = "com.docker.compose.oneoff"
)

// Docker is a connection to the Docker engine.
type Docker struct {
	api *client.Client
}

// Connect reaches the engine named by the usual DOCKER_* variables (the
// local socket by default), negotiates the API version and pings it.
func Connect(ctx context.Context) (*Docker, error) {
	api, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker engine: %w", err)
	}
	if _, err := api.Ping(ctx); err != nil {
		api.Close()
		return nil, fmt.Errorf("docker engine at %s is unreachable: %w", api.DaemonHost(), err)
	}
	api.NegotiateAPIVersion(ctx)
	return &Docker{api: api}, nil
}

// API is the underlying client, for callers (and tests) that need more.
func (d *Docker) API() *client.Client { return d.api }

// Close releases the connection.
func (d *Docker) Close() error { return d.api.Close() }

func projectFilter(project string, more ...filters.KeyValuePair) filters.Args {
	return filters.NewArgs(append([]filters.KeyValuePair{filters.Arg("label", LabelProject+"="+project)}, more...)...)
}
