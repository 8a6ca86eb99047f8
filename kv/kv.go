// Package kv is Stagely's shared fast state: wake-up messages between
// processes and short-lived keys with a TTL (routes, rate limits). Valkey
// backs it when several processes share the work; single-node mode uses
// the in-process Memory. It is never the source of truth: Postgres is.
package kv

import (
	"context"
	"errors"
	"time"
)

// Store is what Stagely needs from Valkey.
type Store interface {
	// Publish sends msg to every current subscriber of channel.
	Publish(ctx context.Context, channel, msg string) error
	// Subscribe delivers channel's messages to fn until ctx ends. It
	// returns once the subscription is live, so a message published
	// after it returns is not missed.
	Subscribe(ctx context.Context, channel string, fn func(msg string)) error
	Set(ctx context.Context, key, value string, ttl time.Duration) error
	// Get returns ErrNotFound for a missing or expired key.
	Get(ctx context.Context, key string) (string, error)
	Del(ctx context.Context, key string) error
	Ping(ctx context.Context) error
	Close()
}

// ErrNotFound is returned by Get for a key that is not there.
var ErrNotFound = errors.New("kv: key not found")

// Open returns a Valkey-backed Store for url, or an in-process one when url
// is empty (single-node mode).
func Open(ctx context.Context, url string) (Store, error) {
	if url == "" {
		return NewMemory(), nil
	}
	return OpenValkey(ctx, url)
}
