package proxy

import (
	"context"
	"errors"
	"sync"
	"time"
)

// resolver caches a RouteStore's answers for a short time, so a busy
// preview costs no route table round trip per request. Answers about a
// missing route are cached too, so a flood of unknown hosts does not turn
// into a flood of lookups. Entries for an agent are dropped when its
// session comes or goes on this node.
type resolver struct {
	store RouteStore
	ttl   time.Duration
	max   int
	now   func() time.Time

	mu      sync.RWMutex
	entries map[string]cached
}

type cached struct {
	route   Route
	err     error // nil or ErrNoRoute
	expires time.Time
}

func newResolver(store RouteStore, ttl time.Duration, max int) *resolver {
	return &resolver{store: store, ttl: ttl, max: max, now: time.Now, entries: map[string]cached{}}
}

// resolve returns host's route, from the cache unless fresh is set.
func (r *resolver) resolve(ctx context.Context, host string, fresh bool) (Route, error) {
	now := r.now()
	if !fresh && r.ttl > 0 {
		r.mu.RLock()
		c, ok := r.entries[host]
		r.mu.RUnlock()
		if ok && now.Before(c.expires) {
			return c.route, c.err
		}
	}
	route, err := r.store.Resolve(ctx, host)
	if err != nil && !errors.Is(err, ErrNoRoute) {
		return Route{}, err // a store failure is not cached
	}
	if r.ttl > 0 {
		r.mu.Lock()
		if len(r.entries) >= r.max {
			clear(r.entries)
		}
		r.entries[host] = cached{route: route, err: err, expires: now.Add(r.ttl)}
		r.mu.Unlock()
	}
	return route, err
}

// forgetAgent drops the cached answers that name agent, or that match one
// of hosts.
func (r *resolver) forgetAgent(agent string, hosts []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for h, c := range r.entries {
		if c.route.Agent == agent {
			delete(r.entries, h)
		}
	}
	for _, h := range hosts {
		delete(r.entries, h)
	}
	// Wildcard grants cover hosts not listed: drop negative answers too.
	for h, c := range r.entries {
		if c.err != nil {
			delete(r.entries, h)
		}
	}
}
