package main

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"sort"
	"strings"

	"github.com/peterbourgon/ff/v3"
	"github.com/peterbourgon/ff/v3/ffcli"
	"github.com/valkey-io/valkey-go"

	"github.com/stagely-dev/stagely/proxy"
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

// noArgs refuses what is left after the flags: flag parsing stops at the
// first argument that is not a flag, so every setting after it would be
// dropped unread.
func noArgs(args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q: the flags after it are not read (every setting is a --flag)", args[0])
	}
	return nil
}

// checkValkeyURL refuses a malformed --valkey-url at start, before
// anything is touched, and without its password: url.Parse's error quotes
// the whole URL.
func checkValkeyURL(raw string) error {
	if raw == "" {
		return nil
	}
	if _, err := valkey.ParseURL(raw); err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("%s: %w", setting("valkey-url"), err)
	}
	return nil
}

// checkPreviewDomain refuses a --preview-domain previews cannot be served
// under, before it is recorded in a shared route table (where every later
// start with the domain put right would be refused as differing).
func checkPreviewDomain(d string) error {
	if !proxy.ValidDomain(strings.ToLower(strings.TrimSuffix(d, "."))) {
		return fmt.Errorf("%s: %q is not a domain name such as preview.example.com", setting("preview-domain"), d)
	}
	return nil
}
