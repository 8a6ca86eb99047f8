package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/peterbourgon/ff/v3/ffcli"
	"github.com/rs/zerolog"
	"github.com/uptrace/bun"

	"github.com/stagely-dev/stagely/app"
	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/fleet"
	"github.com/stagely-dev/stagely/ghclient"
	"github.com/stagely-dev/stagely/kv"
	"github.com/stagely-dev/stagely/migrations"
	"github.com/stagely-dev/stagely/provisioner"
	"github.com/stagely-dev/stagely/reaper"
	"github.com/stagely-dev/stagely/reconciler"
	"github.com/stagely-dev/stagely/repoconfig"
	"github.com/stagely-dev/stagely/store"
)

type serverConfig struct {
	addr          string
	databaseURL   string
	valkeyURL     string
	webhookSecret string
	githubURL     string
	appID         int64
	appKeyFile    string
	appKey        string
	botLogin      string
	workers       int
	lease         time.Duration
	poll          time.Duration
	defaultTTL    time.Duration
	logLevel      string
	logFormat     string
	fleet         fleetConfig
	reapInterval  time.Duration
	orphanGrace   time.Duration
	stuckAfter    time.Duration
	gcPercent     int
}

func (c *serverConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "addr", ":8080", "HTTP listen address of the webhook endpoint and health checks")
	fs.StringVar(&c.databaseURL, "database-url", "", "Postgres URL, e.g. postgres://user:pass@host:5432/stagely (required)")
	fs.StringVar(&c.valkeyURL, "valkey-url", "", "Valkey/Redis URL shared by several processes, e.g. redis://host:6379/0; empty: single-node mode")
	fs.StringVar(&c.webhookSecret, "webhook-secret", "", "the GitHub App's webhook secret (required)")
	fs.StringVar(&c.githubURL, "github-url", "https://api.github.com/", "GitHub REST API root; GitHub Enterprise Server: https://HOST/api/v3/")
	fs.Int64Var(&c.appID, "app-id", 0, "the GitHub App's id (required)")
	fs.StringVar(&c.appKeyFile, "app-key-file", "", "file holding the GitHub App's private key (PEM); or set --app-key")
	fs.StringVar(&c.appKey, "app-key", "", "the GitHub App's private key itself (PEM)")
	fs.StringVar(&c.botLogin, "bot-login", "", "the app's bot login, e.g. stagely[bot]; empty: asked from GitHub at start")
	fs.IntVar(&c.workers, "workers", 8, "environments this process reconciles at once; 0: webhook intake only")
	fs.DurationVar(&c.lease, "lease", 30*time.Second, "how long a worker's claim on an environment lasts without renewal")
	fs.DurationVar(&c.poll, "poll", 2*time.Second, "how often workers look for work when no wake-up arrives")
	fs.DurationVar(&c.defaultTTL, "default-ttl", 72*time.Hour, "preview lifetime without a push when .stagely.yml sets none")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "json", "json or console")
	c.fleet.register(fs)
	fs.DurationVar(&c.reapInterval, "reap-interval", time.Minute, "how often the reaper looks for idle previews, stuck environments and orphaned machines; 0: no reaper in this process")
	fs.DurationVar(&c.orphanGrace, "orphan-grace", 10*time.Minute, "a machine no environment records is destroyed only once it is this old")
	fs.DurationVar(&c.stuckAfter, "stuck-after", 4*time.Hour, "an environment with no progress for this long is retried, then reported failed")
	fs.IntVar(&c.gcPercent, "gc-percent", 400, "Go GC target percentage: higher trades memory for CPU and tail latency on webhook intake and previews (GOMEMLIMIT still caps memory); 0: Go's default or GOGC")
}

// serverDeps are the parts a test may replace.
type serverDeps struct {
	deployer  reconciler.Deployer
	listening func(addr string)
}

func serverCommand(stdout, stderr io.Writer) *ffcli.Command {
	return serverCommandWith(stderr, serverDeps{deployer: unavailableDeployer{}})
}

func serverCommandWith(stderr io.Writer, deps serverDeps) *ffcli.Command {
	var cfg serverConfig
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	cfg.register(fs)
	c := &ffcli.Command{
		Name:       "server",
		ShortUsage: "stagely server [flags]",
		ShortHelp:  "GitHub App webhook endpoint, reconciler workers and health checks",
		LongHelp:   "Runs the GitHub App: records webhook intent in Postgres and reconciles environments.",
		FlagSet:    fs,
		Options:    ffOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			return runServer(ctx, cfg, stderr, deps)
		},
	}
	c.UsageFunc = usage
	return c
}

func newLogger(w io.Writer, level, format string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Nop(), fmt.Errorf("--log-level: %w", err)
	}
	if format == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	} else if format != "json" {
		return zerolog.Nop(), fmt.Errorf("--log-format must be json or console, not %q", format)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

func (c *serverConfig) check() error {
	if err := missing(map[string]bool{"database-url": c.databaseURL == "", "webhook-secret": c.webhookSecret == "", "app-id": c.appID == 0}); err != nil {
		return err
	}
	if c.appKey == "" && c.appKeyFile == "" {
		return fmt.Errorf("missing required setting: --app-key-file (%s) or --app-key (%s)", envName("app-key-file"), envName("app-key"))
	}
	if c.appKey != "" && c.appKeyFile != "" {
		// One of them is left over (an old variable): using either
		// silently could sign with a key the App no longer has.
		return fmt.Errorf("%s and %s are both set: set one", setting("app-key"), setting("app-key-file"))
	}
	if len(c.webhookSecret) < 16 {
		return fmt.Errorf("--webhook-secret (%s) is too short: use at least 16 random characters", envName("webhook-secret"))
	}
	if c.appID < 0 {
		return fmt.Errorf("%s: %d is not a GitHub App id", setting("app-id"), c.appID)
	}
	// The reaper refuses these too, but only once the server takes
	// webhooks, and naming its own fields.
	if c.stuckAfter != 0 && c.stuckAfter < time.Minute {
		return fmt.Errorf("%s: %s is under a minute, and a healthy deploy would look stuck", setting("stuck-after"), c.stuckAfter)
	}
	if c.orphanGrace < 0 {
		return fmt.Errorf("%s: %s is negative", setting("orphan-grace"), c.orphanGrace)
	}
	if c.reapInterval < 0 {
		// 0 is the one way to run no reaper: a negative interval is a
		// typo, and taking it as 0 would leave idle previews and orphaned
		// machines running, billed, without a word.
		return fmt.Errorf("%s: %s is negative; 0 runs no reaper", setting("reap-interval"), c.reapInterval)
	}
	return checkValkeyURL(c.valkeyURL)
}

func (c *serverConfig) privateKey() ([]byte, error) {
	name, key := "app-key", []byte(c.appKey)
	if c.appKey == "" {
		b, err := os.ReadFile(c.appKeyFile)
		if err != nil {
			return nil, fmt.Errorf("--app-key-file: %w", err)
		}
		name, key = "app-key-file", b
	}
	// Parsed as ghinstallation parses it for every request, so that a
	// wrong key is refused here, naming its setting, and not once the
	// database is migrated.
	if _, err := jwt.ParseRSAPrivateKeyFromPEM(key); err != nil {
		return nil, fmt.Errorf("%s: not a PEM-encoded RSA private key: %w", setting(name), err)
	}
	return key, nil
}

func runServer(ctx context.Context, cfg serverConfig, stderr io.Writer, deps serverDeps) error {
	if err := cfg.check(); err != nil {
		return err
	}
	// As `stagely proxy` does: preview hosts are lowercase, without the
	// trailing dot, in URLs, grants and routes alike.
	cfg.fleet.previewDomain = strings.ToLower(strings.TrimSuffix(cfg.fleet.previewDomain, "."))
	log, err := newLogger(stderr, cfg.logLevel, cfg.logFormat)
	if err != nil {
		return err
	}
	key, err := cfg.privateKey()
	if err != nil {
		return err
	}
	if cfg.gcPercent > 0 {
		// At Go's default of 100 the collector ran often enough under a
		// webhook burst to put the intake's p99 past its goal
		// (BenchmarkWebhookIntake); the heap it bounds is small.
		debug.SetGCPercent(cfg.gcPercent)
	}
	machines, err := setUpMachines(ctx, cfg.fleet, cfg.valkeyURL)
	if err != nil {
		return err
	}

	db, err := store.Open(ctx, cfg.databaseURL, 50)
	if err != nil {
		return err
	}
	defer db.Close()
	applied, err := migrations.Apply(ctx, db)
	if err != nil {
		return err
	}
	if len(applied) > 0 {
		log.Info().Strs("migrations", applied).Msg("applied migrations")
	}
	shared, err := kv.Open(ctx, cfg.valkeyURL)
	if err != nil {
		return err
	}
	defer shared.Close()

	clients, err := ghclient.New(ghclient.Config{BaseURL: cfg.githubURL, AppID: cfg.appID, PrivateKeyPEM: key, Logger: log})
	if err != nil {
		return err
	}
	bot := cfg.botLogin
	if bot == "" {
		if bot, err = ghclient.BotLogin(ctx, clients); err != nil {
			return fmt.Errorf("ask GitHub for the app's bot login (or set --bot-login): %w", err)
		}
	}

	base := &app.Base{DB: db, Wake: shared, AppID: cfg.appID, Logger: log}
	mux := http.NewServeMux()
	mux.Handle(app.HookPath, app.NewIntake(base, cfg.webhookSecret))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", readyz(db, shared, log))

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("%s %s: %w", setting("addr"), cfg.addr, err)
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		BaseContext:       func(net.Listener) context.Context { return log.WithContext(context.Background()) },
	}
	// One slot per sender (the webhook server, the in-process proxy's four
	// listeners, the workers): nobody reads after shutdown starts.
	errc := make(chan error, 8)
	go func() { errc <- srv.Serve(ln) }()
	log.Info().Str("addr", ln.Addr().String()).Str("bot", bot).Int("workers", cfg.workers).Msg("stagely server listening")
	if deps.listening != nil {
		deps.listening(ln.Addr().String())
	}

	rctx, stopWorkers := context.WithCancel(ctx)
	defer stopWorkers()
	if cfg.fleet.publicURL == "" {
		cfg.fleet.publicURL = "http://" + ln.Addr().String()
	}
	fp, err := startFleet(rctx, cfg.fleet, machines, cfg.webhookSecret, db, shared, clients, log, errc)
	if err != nil {
		return err
	}
	defer fp.stop()
	defaultProvider := "local"
	if fp.deployer != nil {
		deps.deployer = fp.deployer
		defaultProvider = fp.deployer.ProviderName
		mux.Handle(agentPath, fp.agent)
	}
	workersDone := make(chan struct{})
	if cfg.workers > 0 {
		rec, err := reconciler.New(reconciler.Config{
			DB: db, Wake: shared, Clients: clients, BotLogin: bot, Deployer: deps.deployer,
			Defaults: repoconfig.Defaults{Provider: repoconfig.Provider{Name: defaultProvider}, TTL: cfg.defaultTTL},
			Workers:  cfg.workers, Lease: cfg.lease, Poll: cfg.poll, Logger: log,
		})
		if err != nil {
			return err
		}
		go func() { defer close(workersDone); errc <- rec.Run(rctx) }()
	} else {
		close(workersDone)
	}
	reaperDone := make(chan struct{})
	if cfg.reapInterval > 0 {
		var machines provisioner.Provider
		if fd, ok := deps.deployer.(*fleet.Deployer); ok {
			machines = fd.Provider
		}
		rp, err := reaper.New(reaper.Config{DB: db, Provider: machines, Wake: shared, Interval: cfg.reapInterval,
			OrphanGrace: cfg.orphanGrace, StuckAfter: cfg.stuckAfter, Takeover: 2 * cfg.lease, Logger: log})
		if err != nil {
			return err
		}
		go func() { defer close(reaperDone); _ = rp.Run(rctx) }()
	} else {
		close(reaperDone)
	}

	select {
	case <-ctx.Done():
	case err := <-errc:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	log.Info().Msg("shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	shutdownErr := srv.Shutdown(sctx)
	stopWorkers()
	<-workersDone
	<-reaperDone
	return shutdownErr
}

// readyz answers 200 when Postgres and Valkey both answer, else 503 naming
// what does not. Why goes to the log only: the port is public (GitHub
// sends its webhooks to it), and a driver's error names internal
// addresses, users and databases.
func readyz(db *bun.DB, shared kv.Store, log zerolog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		var bad []string
		if err := db.PingContext(ctx); err != nil {
			log.Warn().Err(err).Msg("readyz: postgres does not answer")
			bad = append(bad, "postgres does not answer")
		}
		if err := shared.Ping(ctx); err != nil {
			log.Warn().Err(err).Msg("readyz: valkey does not answer")
			bad = append(bad, "valkey does not answer")
		}
		if len(bad) > 0 {
			http.Error(w, "not ready: "+strings.Join(bad, "; "), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	}
}

// unavailableDeployer is the Deployer until this build has a provisioner:
// every deploy fails visibly on the Check Run, saying why.
type unavailableDeployer struct{}

func (unavailableDeployer) Deploy(context.Context, reconciler.DeployRequest, func([]checks.Step)) (reconciler.DeployResult, error) {
	return reconciler.DeployResult{}, &reconciler.DeployError{
		Step:   "Provision",
		Reason: "this Stagely server has no machine provider configured",
		Hint:   "ask the Stagely operator to configure a provider",
	}
}

func (unavailableDeployer) Destroy(context.Context, reconciler.Target) error { return nil }
