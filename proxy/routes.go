package proxy

import (
	"context"
	"errors"
	"time"
)

// Route is where a hostname's requests go.
type Route struct {
	// Key is the route table entry that matched: the host itself, or
	// "*.parent" for a wildcard entry.
	Key string
	// Environment is the preview environment the host belongs to.
	Environment string
	// Agent serves the environment.
	Agent string
	// Node is the internal hop address of the proxy node holding the
	// agent's session, empty when the agent is connected nowhere.
	Node string
	// Generation is that session's generation (tunnel.Session.Generation).
	Generation uint64
}

// Publication is what a node announces for one connected agent: the
// agent's location, and the hostnames it serves.
type Publication struct {
	Agent       string
	Environment string
	// Hosts are exact hostnames or "*.parent" patterns.
	Hosts      []string
	Node       string
	Generation uint64
	// Refresh marks a session's periodic re-publication: it extends the
	// host entries still there and does not bring back one deleted since
	// (the server deletes an environment's hosts before its machine, and
	// so its session, is gone), unless the agent's location was missing
	// too: the table lost its keys, or the session's first publication
	// failed.
	Refresh bool
}

// RouteStore is the route table. Memory is the single-node one;
// Valkey is shared by several proxy nodes and the server.
type RouteStore interface {
	// Publish records, for each publication, the agent's location with
	// agentTTL and its hosts with hostTTL (a refresh only extends hosts,
	// see Publication.Refresh), unless a newer generation is recorded: a
	// stale node never overwrites a fresh one. Each publication is written
	// whole or not at all.
	Publish(ctx context.Context, pubs []Publication, agentTTL, hostTTL time.Duration) error
	// Withdraw removes the agent's location if generation gen still holds
	// it. Hosts stay: a known host whose agent is gone answers 502, not
	// 404.
	Withdraw(ctx context.Context, agent string, gen uint64) error
	// PutHost maps host (exact or "*.parent") to an environment's agent;
	// ttl 0 keeps it until DeleteHost. The server publishes routes with it.
	PutHost(ctx context.Context, host, environment, agent string, ttl time.Duration) error
	// DeleteHost removes host's entry.
	DeleteHost(ctx context.Context, host string) error
	// Resolve finds host's route: the exact entry first, then the
	// wildcard entry of its parent. It returns ErrNoRoute when neither
	// exists; a Route with an empty Node when the agent is not connected.
	Resolve(ctx context.Context, host string) (Route, error)
	Close()
}

// ErrNoRoute is returned by Resolve for a host with no route.
var ErrNoRoute = errors.New("proxy: no route for host")

// wildcardKey is the route table key of host's parent wildcard, or "" if
// host has a single label.
func wildcardKey(host string) string {
	for i := 0; i < len(host); i++ {
		if host[i] == '.' {
			return "*" + host[i:]
		}
	}
	return ""
}
