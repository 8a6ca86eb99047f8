// Command stagely is Stagely's one binary: the GitHub App server, the edge
// proxy, the agent that runs on each preview VM, the migrator, the demo
// and the GitHub simulator. Every setting is a flag and a STAGELY_* env
// variable; `stagely <command> --help` lists them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/stagely-dev/stagely/ghsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "stagely:", err)
		}
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "ghsim" {
		return ghsim.Run(ctx, args[1:], stdout, stderr)
	}
	root := &ffcli.Command{
		ShortUsage: "stagely <command> [flags]",
		LongHelp:   "Stagely gives every pull request its own live preview environment.",
		FlagSet:    flag.NewFlagSet("stagely", flag.ContinueOnError),
		Subcommands: []*ffcli.Command{
			serverCommand(stdout, stderr),
			migrateCommand(stdout, stderr),
			ghsimCommand(stdout, stderr),
			proxyCommand(stdout, stderr),
			agentExposeCommand(stdout, stderr),
			demoCommand(stdout, stderr),
		},
		Exec: func(ctx context.Context, args []string) error { return flag.ErrHelp },
	}
	root.FlagSet.SetOutput(stderr)
	for _, c := range root.Subcommands {
		c.FlagSet.SetOutput(stderr)
	}
	return root.ParseAndRun(ctx, args)
}
