package kv_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/kv"
)

// valkeyURL is the server scripts/services.sh starts; a test that cannot
// reach it fails rather than skips.
func valkeyURL() string {
	if u := os.Getenv("STAGELY_TEST_VALKEY_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

func stores(t *testing.T) map[string]kv.Store {
	v, err := kv.OpenValkey(context.Background(), valkeyURL())
	if err != nil {
		t.Fatalf("valkey is required for this test (run scripts/services.sh): %v", err)
	}
	t.Cleanup(v.Close)
	return map[string]kv.Store{"memory": kv.NewMemory(), "valkey": v}
}

func TestStoreContract(t *testing.T) {
	for name, s := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			prefix := fmt.Sprintf("test:%s:%d:", name, time.Now().UnixNano())

			if _, err := s.Get(ctx, prefix+"missing"); !errors.Is(err, kv.ErrNotFound) {
				t.Errorf("Get missing = %v, want ErrNotFound", err)
			}
			if err := s.Set(ctx, prefix+"k", "v", 0); err != nil {
				t.Fatal(err)
			}
			if got, err := s.Get(ctx, prefix+"k"); err != nil || got != "v" {
				t.Errorf("Get = %q, %v", got, err)
			}
			if err := s.Set(ctx, prefix+"ttl", "v", 50*time.Millisecond); err != nil {
				t.Fatal(err)
			}
			time.Sleep(120 * time.Millisecond)
			if _, err := s.Get(ctx, prefix+"ttl"); !errors.Is(err, kv.ErrNotFound) {
				t.Errorf("expired key: %v, want ErrNotFound", err)
			}
			if err := s.Del(ctx, prefix+"k"); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Get(ctx, prefix+"k"); !errors.Is(err, kv.ErrNotFound) {
				t.Errorf("deleted key: %v", err)
			}

			got := make(chan string, 10)
			if err := s.Subscribe(ctx, prefix+"wake", func(m string) { got <- m }); err != nil {
				t.Fatal(err)
			}
			// Published right after Subscribe returns: must not be lost.
			if err := s.Publish(ctx, prefix+"wake", "env-1"); err != nil {
				t.Fatal(err)
			}
			select {
			case m := <-got:
				if m != "env-1" {
					t.Errorf("message = %q", m)
				}
			case <-time.After(2 * time.Second):
				t.Fatal("published message never arrived")
			}
			if err := s.Ping(ctx); err != nil {
				t.Error(err)
			}
		})
	}
}
