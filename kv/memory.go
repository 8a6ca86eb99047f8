package kv

import (
	"context"
	"sync"
	"time"
)

// Memory is the single-node Store: everything lives in this process.
type Memory struct {
	mu   sync.Mutex
	keys map[string]entry
	subs map[string]map[*sub]struct{}
}

type entry struct {
	value   string
	expires time.Time // zero: never
}

type sub struct {
	ch chan string
}

// NewMemory returns an empty in-process Store.
func NewMemory() *Memory {
	return &Memory{keys: map[string]entry{}, subs: map[string]map[*sub]struct{}{}}
}

func (m *Memory) Publish(_ context.Context, channel, msg string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for s := range m.subs[channel] {
		select {
		case s.ch <- msg:
		default: // a wake-up bus: a slow subscriber already has one pending
		}
	}
	return nil
}

func (m *Memory) Subscribe(ctx context.Context, channel string, fn func(string)) error {
	s := &sub{ch: make(chan string, 64)}
	m.mu.Lock()
	if m.subs[channel] == nil {
		m.subs[channel] = map[*sub]struct{}{}
	}
	m.subs[channel][s] = struct{}{}
	m.mu.Unlock()
	go func() {
		defer func() {
			m.mu.Lock()
			delete(m.subs[channel], s)
			m.mu.Unlock()
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case msg := <-s.ch:
				fn(msg)
			}
		}
	}()
	return nil
}

func (m *Memory) Set(_ context.Context, key, value string, ttl time.Duration) error {
	e := entry{value: value}
	if ttl > 0 {
		e.expires = time.Now().Add(ttl)
	}
	m.mu.Lock()
	m.keys[key] = e
	m.mu.Unlock()
	return nil
}

func (m *Memory) Get(_ context.Context, key string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.keys[key]
	if !ok {
		return "", ErrNotFound
	}
	if !e.expires.IsZero() && time.Now().After(e.expires) {
		delete(m.keys, key)
		return "", ErrNotFound
	}
	return e.value, nil
}

func (m *Memory) Del(_ context.Context, key string) error {
	m.mu.Lock()
	delete(m.keys, key)
	m.mu.Unlock()
	return nil
}

func (m *Memory) Ping(context.Context) error { return nil }
func (m *Memory) Close()                     {}
