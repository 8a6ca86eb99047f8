package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/stagely-dev/stagely/tunnel"
)

// exposeFlag collects repeated --expose HOST=ADDR.
type exposeFlag map[string]string

func (e exposeFlag) String() string {
	var parts []string
	for h, a := range e {
		parts = append(parts, h+"="+a)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func (e exposeFlag) Set(v string) error {
	for _, one := range strings.Split(v, ",") {
		host, addr, ok := strings.Cut(strings.TrimSpace(one), "=")
		host = strings.ToLower(strings.TrimSuffix(host, "."))
		if !ok || host == "" || addr == "" {
			return fmt.Errorf("want HOST=ADDR, got %q", one)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s: address %q: %w", host, addr, err)
		}
		// One address per host: a later one would silently win.
		if prev, ok := e[host]; ok && prev != addr {
			return fmt.Errorf("%s is exposed twice, at %s and at %s", host, prev, addr)
		}
		e[host] = addr
	}
	return nil
}

type agentExposeConfig struct {
	expose     exposeFlag
	proxyAddr  string
	token      string
	caFile     string
	serverName string
	logLevel   string
	logFormat  string

	// Managed mode, on a preview machine (set by cloud-init).
	bootstrapFile string
	stateDir      string
}

// agentExposeCommand is `stagely agent --expose HOST=ADDR`: an agent that
// shares local services through a proxy, as one would use ngrok, without
// the Stagely server.
func agentExposeCommand(stdout, stderr io.Writer) *ffcli.Command {
	cfg := agentExposeConfig{expose: exposeFlag{}}
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.Var(cfg.expose, "expose", "HOST=ADDR: serve requests for HOST (or *.parent) from the local service at ADDR; repeat or comma-separate (required)")
	fs.StringVar(&cfg.proxyAddr, "proxy", "", "the proxy's tunnel address, host:port (required)")
	fs.StringVar(&cfg.token, "token", "", "this agent's token, as listed in the proxy's route file (required)")
	fs.StringVar(&cfg.caFile, "ca", "", "PEM file of the CA that signed the proxy's tunnel certificate (e.g. its --dev-ca-file); default: system roots")
	fs.StringVar(&cfg.serverName, "server-name", "", "name to verify in the proxy's certificate; default: the host of --proxy")
	fs.StringVar(&cfg.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&cfg.logFormat, "log-format", "console", "json or console")
	fs.StringVar(&cfg.bootstrapFile, "bootstrap-token-file", "", "managed mode, on a preview machine: the one-time bootstrap token written by cloud-init")
	fs.StringVar(&cfg.stateDir, "state-dir", "", "managed mode: where the agent keeps its token and the environment's files")
	fs.String("environment-id", "", "managed mode: the environment this machine serves (informational; the token decides)")
	fs.String("server-url", "", "managed mode: the Stagely server (informational; control goes through the proxy)")
	fs.String("agent-url", "", "managed mode: where cloud-init fetched this binary (informational)")
	fs.String("agent-sha256", "", "managed mode: the binary's checksum (informational)")
	fs.StringVar(&cfg.proxyAddr, "proxy-addr", "", "alias of --proxy, as cloud-init sets it")
	fs.StringVar(&cfg.caFile, "ca-file", "", "alias of --ca")
	c := &ffcli.Command{
		Name:       "agent",
		ShortUsage: "stagely agent --expose HOST=ADDR --proxy ADDR --token T [--ca FILE]",
		ShortHelp:  "share local services through a proxy's tunnel (outbound only)",
		LongHelp: "Dials the proxy over TLS and holds a tunnel: requests for each exposed HOST reach its ADDR. " +
			"It opens no listening socket; it reconnects with backoff whenever the tunnel drops.",
		FlagSet: fs,
		Options: ffOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if cfg.bootstrapFile != "" || cfg.stateDir != "" {
				log, err := newLogger(stderr, cfg.logLevel, cfg.logFormat)
				if err != nil {
					return err
				}
				return runManagedAgent(ctx, cfg, log)
			}
			return runAgentExpose(ctx, cfg, stdout, stderr)
		},
	}
	c.UsageFunc = usage
	return c
}

func runAgentExpose(ctx context.Context, cfg agentExposeConfig, stdout, stderr io.Writer) error {
	if err := missing(map[string]bool{"expose": len(cfg.expose) == 0, "proxy": cfg.proxyAddr == "", "token": cfg.token == ""}); err != nil {
		return err
	}
	log, err := newLogger(stderr, cfg.logLevel, cfg.logFormat)
	if err != nil {
		return err
	}
	tc := &tls.Config{ServerName: cfg.serverName}
	if cfg.caFile != "" {
		pem, err := os.ReadFile(cfg.caFile)
		if err != nil {
			return fmt.Errorf("--ca: %w", err)
		}
		if tc.RootCAs, err = tunnel.CAPool(pem); err != nil {
			return fmt.Errorf("--ca %s: %w", cfg.caFile, err)
		}
	}
	tcfg := tunnel.DefaultConfig()
	tcfg.Logger = log
	fwd := &tunnel.Forward{Targets: cfg.expose, Logger: log}
	a, err := tunnel.NewAgent(tunnel.AgentConfig{
		Addr:    cfg.proxyAddr,
		Token:   cfg.token,
		TLS:     tc,
		Handler: fwd,
		Tunnel:  tcfg,
		Version: "stagely-agent-expose",
		OnConnect: func(w tunnel.Welcome) {
			for _, h := range w.Hostnames {
				if _, ok := fwd.Target(h); !ok {
					log.Warn().Str("hostname", h).Msg("the proxy grants this hostname but nothing is exposed for it")
				}
			}
			for h, addr := range cfg.expose {
				if !exposeGranted(w.Hostnames, h) {
					log.Warn().Str("hostname", h).Msg("exposed, but the proxy does not route this hostname to this agent")
					continue
				}
				fmt.Fprintf(stdout, "%s -> %s\n", h, addr)
			}
		},
	})
	if err != nil {
		return err
	}
	err = a.Run(ctx)
	if errors.Is(err, tunnel.ErrRefused) {
		return fmt.Errorf("the proxy refused this agent: %w", err)
	}
	return err
}

// exposeGranted reports whether the proxy routes to this agent a hostname
// that the exposed h (a name, *.parent or *) serves: a name the grants
// cover, or a grant that h's pattern covers.
func exposeGranted(grants []string, h string) bool {
	if tunnel.HostAllowed(grants, h) {
		return true
	}
	one := tunnel.Forward{Targets: map[string]string{h: ""}}
	for _, g := range grants {
		if _, ok := one.Target(g); ok {
			return true
		}
	}
	return false
}
