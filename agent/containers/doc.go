// Package containers follows a compose project's containers through the
// Docker engine's API (the docker/docker client, API version negotiated,
// so Debian's older engines work): their state, health, restarts and exit
// codes, each service's address on the compose network (how the tunnel
// reaches a service that publishes no port), their output, and the
// project's leftovers after `compose down`.
//
// Everything is found by Compose's own project label. It does not create
// or start anything: that is `docker compose` (package compose).
package containers
