package tunnel

import (
	"sync"
	"time"
)

// registry holds the live sessions by agent identity. Each session gets a
// generation when it is accepted; removal is by generation, so an old
// session that ends after its agent reconnected removes nothing.
type registry struct {
	mu       sync.RWMutex
	sessions map[string]*Session
	lastGen  uint64
}

func newRegistry() *registry {
	return &registry{sessions: map[string]*Session{}}
}

// nextGeneration returns a number larger than any given before: the wall
// clock in nanoseconds, bumped past the last one, so generations also
// order sessions accepted by different proxy nodes (PROTOCOL.md section 8).
func (r *registry) nextGeneration() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	g := uint64(time.Now().UnixNano())
	if g <= r.lastGen {
		g = r.lastGen + 1
	}
	r.lastGen = g
	return g
}

// add makes s the agent's session and returns the one it replaced.
func (r *registry) add(s *Session) (replaced *Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.sessions[s.id.Agent]
	if old != nil && old.gen > s.gen {
		// A newer session won a race with this one: keep the newer.
		return s
	}
	r.sessions[s.id.Agent] = s
	return old
}

// remove deletes s if it is still its agent's current session, and
// reports whether it was.
func (r *registry) remove(s *Session) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur := r.sessions[s.id.Agent]; cur == s {
		delete(r.sessions, s.id.Agent)
		return true
	}
	return false
}

func (r *registry) lookup(agent string) *Session {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.sessions[agent]
}

func (r *registry) snapshot() []*Session {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*Session, 0, len(r.sessions))
	for _, s := range r.sessions {
		out = append(out, s)
	}
	return out
}

func (r *registry) len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.sessions)
}
