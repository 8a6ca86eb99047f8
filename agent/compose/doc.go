// Package compose is what the agent knows about Docker Compose: it loads a
// repository's compose files (with compose-go, the loader Compose itself
// uses), refuses what the server's policy forbids with a message naming the
// file, line, service and key, writes the override file (project labels,
// published ports removed, variables through a private env file) and runs
// the `docker compose` v2 plugin.
//
// It is not the deploy sequence (package agent) and it does not talk to the
// Docker engine's API (package containers).
package compose
