package main

import (
	"context"
	"flag"
	"io"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/stagely-dev/stagely/ghsim"
)

// ghsimCommand only lists the simulator in the root help: run hands
// `stagely ghsim …` straight to ghsim.Run, which parses its own flags.
func ghsimCommand(stdout, stderr io.Writer) *ffcli.Command {
	return &ffcli.Command{
		Name:       "ghsim",
		ShortUsage: "stagely ghsim [flags]",
		ShortHelp:  "a strict GitHub simulator for tests and the demo (--help for its flags)",
		FlagSet:    flag.NewFlagSet("ghsim", flag.ContinueOnError),
		Exec: func(ctx context.Context, args []string) error {
			return ghsim.Run(ctx, args, stdout, stderr)
		},
	}
}
