package proxy

import (
	"context"
	"sync"
	"time"
)

// Memory is the in-process RouteStore of single-node mode.
type Memory struct {
	mu     sync.RWMutex
	hosts  map[string]memHost
	agents map[string]memAgent
	now    func() time.Time
	swept  time.Time
}

type memHost struct {
	env, agent string
	expires    time.Time // zero: never
}

type memAgent struct {
	node    string
	gen     uint64
	expires time.Time
}

// NewMemory returns an empty in-process route table.
func NewMemory() *Memory {
	return &Memory{hosts: map[string]memHost{}, agents: map[string]memAgent{}, now: time.Now}
}

func expiry(now time.Time, ttl time.Duration) time.Time {
	if ttl <= 0 {
		return time.Time{}
	}
	return now.Add(ttl)
}

func live(exp, now time.Time) bool { return exp.IsZero() || now.Before(exp) }

func (m *Memory) Publish(_ context.Context, pubs []Publication, agentTTL, hostTTL time.Duration) error {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweep(now)
	for _, p := range pubs {
		cur, ok := m.agents[p.Agent]
		located := ok && live(cur.expires, now)
		if located && cur.gen > p.Generation {
			continue // a stale node
		}
		m.agents[p.Agent] = memAgent{node: p.Node, gen: p.Generation, expires: expiry(now, agentTTL)}
		for _, h := range p.Hosts {
			if old, ok := m.hosts[h]; p.Refresh && located && (!ok || !live(old.expires, now)) {
				continue // deleted since
			}
			m.hosts[h] = memHost{env: p.Environment, agent: p.Agent, expires: expiry(now, hostTTL)}
		}
	}
	return nil
}

// sweep drops expired entries, at most once a minute; m.mu is held.
func (m *Memory) sweep(now time.Time) {
	if now.Sub(m.swept) < time.Minute {
		return
	}
	m.swept = now
	for k, h := range m.hosts {
		if !live(h.expires, now) {
			delete(m.hosts, k)
		}
	}
	for k, a := range m.agents {
		if !live(a.expires, now) {
			delete(m.agents, k)
		}
	}
}

func (m *Memory) Withdraw(_ context.Context, agent string, gen uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.agents[agent]; ok && cur.gen == gen {
		delete(m.agents, agent)
	}
	return nil
}

func (m *Memory) PutHost(_ context.Context, host, env, agent string, ttl time.Duration) error {
	m.mu.Lock()
	m.hosts[host] = memHost{env: env, agent: agent, expires: expiry(m.now(), ttl)}
	m.mu.Unlock()
	return nil
}

func (m *Memory) DeleteHost(_ context.Context, host string) error {
	m.mu.Lock()
	delete(m.hosts, host)
	m.mu.Unlock()
	return nil
}

func (m *Memory) Resolve(_ context.Context, host string) (Route, error) {
	now := m.now()
	m.mu.RLock()
	defer m.mu.RUnlock()
	key := host
	h, ok := m.hosts[key]
	if !ok || !live(h.expires, now) {
		key = wildcardKey(host)
		if key == "" {
			return Route{}, ErrNoRoute
		}
		h, ok = m.hosts[key]
		if !ok || !live(h.expires, now) {
			return Route{}, ErrNoRoute
		}
	}
	r := Route{Key: key, Environment: h.env, Agent: h.agent}
	if a, ok := m.agents[h.agent]; ok && live(a.expires, now) {
		r.Node, r.Generation = a.node, a.gen
	}
	return r, nil
}

func (m *Memory) Close() {}
