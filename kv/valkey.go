package kv

import (
	"context"
	"fmt"
	"time"

	"github.com/valkey-io/valkey-go"
)

// Valkey is the Store shared by several Stagely processes.
type Valkey struct {
	c valkey.Client
}

// OpenValkey connects to the Valkey (or Redis 7) server at url, e.g.
// redis://127.0.0.1:6379/0.
func OpenValkey(ctx context.Context, url string) (*Valkey, error) {
	opt, err := valkey.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("parse valkey URL: %w", err)
	}
	// Client-side caching is not wanted: keys here are short-lived and
	// written by other processes.
	opt.DisableCache = true
	c, err := valkey.NewClient(opt)
	if err != nil {
		return nil, fmt.Errorf("connect to valkey at %v: %w", opt.InitAddress, err)
	}
	v := &Valkey{c: c}
	if err := v.Ping(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return v, nil
}

func (v *Valkey) Publish(ctx context.Context, channel, msg string) error {
	if err := v.c.Do(ctx, v.c.B().Publish().Channel(channel).Message(msg).Build()).Error(); err != nil {
		return fmt.Errorf("publish to %s: %w", channel, err)
	}
	return nil
}

func (v *Valkey) Subscribe(ctx context.Context, channel string, fn func(string)) error {
	first := make(chan error, 1)
	go func() {
		// A dedicated connection carries the subscription; when it drops,
		// subscribe again on a new one until ctx ends.
		for attempt := 0; ctx.Err() == nil; attempt++ {
			dc, release := v.c.Dedicate()
			lost := dc.SetPubSubHooks(valkey.PubSubHooks{
				OnMessage: func(m valkey.PubSubMessage) { fn(m.Message) },
			})
			err := dc.Do(ctx, dc.B().Subscribe().Channel(channel).Build()).Error()
			if attempt == 0 {
				first <- err
			}
			if err == nil {
				select {
				case <-ctx.Done():
				case <-lost:
				}
			}
			release()
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	select {
	case err := <-first:
		if err != nil {
			return fmt.Errorf("subscribe to %s: %w", channel, err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (v *Valkey) Set(ctx context.Context, key, value string, ttl time.Duration) error {
	var err error
	if ttl > 0 {
		err = v.c.Do(ctx, v.c.B().Set().Key(key).Value(value).Px(ttl).Build()).Error()
	} else {
		err = v.c.Do(ctx, v.c.B().Set().Key(key).Value(value).Build()).Error()
	}
	if err != nil {
		return fmt.Errorf("set %s: %w", key, err)
	}
	return nil
}

func (v *Valkey) Get(ctx context.Context, key string) (string, error) {
	s, err := v.c.Do(ctx, v.c.B().Get().Key(key).Build()).ToString()
	if valkey.IsValkeyNil(err) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("get %s: %w", key, err)
	}
	return s, nil
}

func (v *Valkey) Del(ctx context.Context, key string) error {
	if err := v.c.Do(ctx, v.c.B().Del().Key(key).Build()).Error(); err != nil {
		return fmt.Errorf("del %s: %w", key, err)
	}
	return nil
}

func (v *Valkey) Ping(ctx context.Context) error {
	if err := v.c.Do(ctx, v.c.B().Ping().Build()).Error(); err != nil {
		return fmt.Errorf("ping valkey: %w", err)
	}
	return nil
}

func (v *Valkey) Close() { v.c.Close() }
