package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/stagely-dev/stagely/migrations"
	"github.com/stagely-dev/stagely/store"
)

func migrateCommand(stdout, stderr io.Writer) *ffcli.Command {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	dbURL := fs.String("database-url", "", "Postgres URL (required)")
	c := &ffcli.Command{
		Name:       "migrate",
		ShortUsage: "stagely migrate [flags]",
		ShortHelp:  "apply the database migrations",
		LongHelp:   "Applies the embedded migrations under an advisory lock; the server also does this at start.",
		FlagSet:    fs,
		Options:    ffOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if err := missing(map[string]bool{"database-url": *dbURL == ""}); err != nil {
				return err
			}
			db, err := store.Open(ctx, *dbURL, 2)
			if err != nil {
				return err
			}
			defer db.Close()
			applied, err := migrations.Apply(ctx, db)
			if err != nil {
				return err
			}
			if len(applied) == 0 {
				fmt.Fprintln(stdout, "database is up to date")
			}
			for _, m := range applied {
				fmt.Fprintln(stdout, "applied", m)
			}
			return nil
		},
	}
	c.UsageFunc = usage
	return c
}
