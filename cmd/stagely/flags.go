package main

import (
	"flag"
	"fmt"
	"sort"
	"strings"

	"github.com/peterbourgon/ff/v3"
	"github.com/peterbourgon/ff/v3/ffcli"
)

// envPrefix makes every flag --foo-bar settable as STAGELY_FOO_BAR.
const envPrefix = "STAGELY"

func ffOptions() []ff.Option { return []ff.Option{ff.WithEnvVarPrefix(envPrefix)} }

// envName is the variable ff reads for flag name.
func envName(name string) string {
	return envPrefix + "_" + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(name))
}

// usage lists each flag with its env variable and default, so --help is
// the full reference of a command's settings.
func usage(c *ffcli.Command) string {
	var b strings.Builder
	fmt.Fprintf(&b, "USAGE\n  %s\n\n", c.ShortUsage)
	if c.LongHelp != "" {
		fmt.Fprintf(&b, "%s\n\n", c.LongHelp)
	}
	b.WriteString("FLAGS (each also read from the environment variable shown)\n")
	c.FlagSet.VisitAll(func(f *flag.Flag) {
		def := ""
		if f.DefValue != "" {
			def = fmt.Sprintf(" (default %q)", f.DefValue)
		}
		fmt.Fprintf(&b, "  --%s, %s%s\n      %s\n", f.Name, envName(f.Name), def, f.Usage)
	})
	return b.String()
}

// missing returns an error naming every required setting that is unset,
// given as flag name → unset.
func missing(unset map[string]bool) error {
	var names []string
	for n, u := range unset {
		if u {
			names = append(names, fmt.Sprintf("--%s (%s)", n, envName(n)))
		}
	}
	if len(names) == 0 {
		return nil
	}
	sort.Strings(names)
	return fmt.Errorf("missing required setting: %s", strings.Join(names, ", "))
}
