// Package store is Stagely's Postgres state: the row types, opening the
// database, and the few queries whose correctness depends on their exact
// SQL (delivery de-duplication, intent upserts, the reconciler's claim). It
// holds no GitHub or cloud logic.
package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
)

// Open connects to Postgres at url and checks that it answers.
func Open(ctx context.Context, url string, maxConns int) (*bun.DB, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	sqldb := stdlib.OpenDB(*cfg)
	if maxConns <= 0 {
		maxConns = 20
	}
	sqldb.SetMaxOpenConns(maxConns)
	sqldb.SetMaxIdleConns(maxConns)
	sqldb.SetConnMaxIdleTime(5 * time.Minute)
	db := bun.NewDB(sqldb, pgdialect.New())
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to postgres at %s: %w", redact(cfg), err)
	}
	return db, nil
}

func redact(cfg *pgx.ConnConfig) string {
	return fmt.Sprintf("%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}

// InTx runs fn in a transaction, committing if it returns nil.
func InTx(ctx context.Context, db bun.IDB, fn func(ctx context.Context, tx bun.Tx) error) error {
	return db.RunInTx(ctx, &sql.TxOptions{}, fn)
}

// querier is database/sql's side of a bun handle. Hot statements go through
// it with $n placeholders instead of bun's client-side formatting, so pgx
// prepares each once per connection and Postgres does not parse and plan
// it again for every webhook.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func raw(db bun.IDB) querier {
	switch v := db.(type) {
	case bun.Tx:
		return v.Tx
	case *bun.Tx:
		return v.Tx
	case *bun.DB:
		return v.DB
	case bun.Conn:
		return v.Conn
	}
	panic(fmt.Sprintf("store: unsupported database handle %T", db))
}
