// Package storetest gives each test its own freshly migrated Postgres
// database on the server named by STAGELY_TEST_DATABASE_URL (default: the
// local server that scripts/services.sh starts). A test that cannot reach
// Postgres fails: it is never skipped, so CI cannot pass without it.
package storetest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/migrations"
	"github.com/stagely-dev/stagely/store"
)

// DefaultURL is the server scripts/services.sh sets up.
const DefaultURL = "postgres://stagely:stagely@127.0.0.1:5432/stagely?sslmode=disable"

// AdminURL is the database URL tests create their databases through.
func AdminURL() string {
	if u := os.Getenv("STAGELY_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// NewURL creates an empty, migrated database for t, drops it when t ends,
// and returns its URL (for tests that start server processes).
func NewURL(t testing.TB) string {
	t.Helper()
	u := NewEmptyURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := store.Open(ctx, u, 2)
	if err != nil {
		t.Fatalf("open test database: %v", err)
	}
	defer db.Close()
	if _, err := migrations.Apply(ctx, db); err != nil {
		t.Fatalf("migrate test database: %v", err)
	}
	return u
}

// NewEmptyURL is NewURL without the migrations.
func NewEmptyURL(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := store.Open(ctx, AdminURL(), 2)
	if err != nil {
		t.Fatalf("postgres is required for this test (run scripts/services.sh): %v", err)
	}
	name := fmt.Sprintf("stagely_test_%d_%s", time.Now().UnixNano(), strings.ToLower(safe(t.Name())))
	if len(name) > 63 {
		name = name[:63]
	}
	if _, err := admin.ExecContext(ctx, `CREATE DATABASE "`+name+`"`); err != nil {
		admin.Close()
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, `DROP DATABASE IF EXISTS "`+name+`" WITH (FORCE)`); err != nil {
			t.Logf("drop test database %s: %v", name, err)
		}
		admin.Close()
	})
	u, err := url.Parse(AdminURL())
	if err != nil {
		t.Fatalf("parse %s: %v", AdminURL(), err)
	}
	u.Path = "/" + name
	return u.String()
}

// New returns a handle on a fresh migrated database, closed when t ends.
func New(t testing.TB) *bun.DB {
	t.Helper()
	db, err := store.Open(context.Background(), NewURL(t), 20)
	if err != nil {
		t.Fatalf("open test database: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func safe(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}
