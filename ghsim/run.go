package ghsim

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// envPrefix prefixes the environment variables Run reads, one per flag:
// --app-id is STAGELY_GHSIM_APP_ID, --record is STAGELY_GHSIM_RECORD.
const envPrefix = "STAGELY_GHSIM_"

// Run is the `stagely ghsim` command: it serves a simulator until ctx ends.
// args are the arguments after "ghsim". Flags override environment
// variables; --help lists both.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stagely ghsim", flag.ContinueOnError)
	fs.SetOutput(stdout)
	envName := func(flagName string) string {
		return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
	}
	str := func(name, def, usage string) *string {
		return fs.String(name, def, usage+" (env "+envName(name)+")")
	}
	addr := str("addr", "127.0.0.1:8787", "address to listen on")
	baseURL := str("base-url", "", "public URL of the simulator used in responses; default http://<addr>")
	appIDText := str("app-id", "1", "the simulated GitHub App's id")
	appSlug := str("app-slug", "stagely", "the App's slug; its bot user is <slug>[bot]")
	keyFile := str("app-key-file", "", "PEM file with the App's private key; written with a new key if absent")
	webhookURL := str("webhook-url", "", "where to POST webhooks; none are sent if empty")
	webhookSecret := str("webhook-secret", "", "secret signing the webhooks (X-Hub-Signature-256)")
	record := str("record", "", "append one JSON line per API request to this file")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: stagely ghsim [flags]\n\nServes a strict simulation of the GitHub API and sends GitHub-shaped webhooks.\nAdmin API under /_ghsim/ (see ghsim/README.md).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	// Environment variables fill the flags not given on the command line.
	// (Not used as flag defaults, so --help shows no secrets.)
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if v, ok := os.LookupEnv(envName(f.Name)); ok && !given[f.Name] && envErr == nil {
			envErr = fs.Set(f.Name, v)
		}
	})
	if envErr != nil {
		return fmt.Errorf("ghsim: environment: %w", envErr)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("ghsim: unexpected arguments %q", fs.Args())
	}
	appID, err := strconv.ParseInt(*appIDText, 10, 64)
	if err != nil || appID <= 0 {
		return fmt.Errorf("ghsim: app id %q is not a positive integer", *appIDText)
	}

	keyPEM, err := loadKeyFile(*keyFile)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("ghsim: listen: %w", err)
	}
	defer ln.Close()
	if *baseURL == "" {
		*baseURL = "http://" + ln.Addr().String()
	}
	sim, err := New(Config{
		AppID: appID, AppSlug: *appSlug, AppPrivateKeyPEM: keyPEM,
		WebhookURL: *webhookURL, WebhookSecret: *webhookSecret,
		RecordPath: *record, BaseURL: *baseURL,
	})
	if err != nil {
		return err
	}
	defer sim.Close()
	if *keyFile == "" {
		fmt.Fprintln(stderr, "ghsim: no --app-key-file: the generated App key is not saved, so no client can sign App JWTs")
	} else if keyPEM == nil {
		if err := os.WriteFile(*keyFile, sim.AppPrivateKeyPEM(), 0o600); err != nil {
			return fmt.Errorf("ghsim: write app key: %w", err)
		}
		fmt.Fprintf(stderr, "ghsim: wrote a new App key to %s\n", *keyFile)
	}

	srv := &http.Server{Handler: logRequests(sim, stderr), ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(stdout, "ghsim: listening on %s (app id %d, slug %s)\n", *baseURL, appID, *appSlug)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("ghsim: serve: %w", err)
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutdownCtx); err != nil {
			return fmt.Errorf("ghsim: shutdown: %w", err)
		}
		return nil
	}
}

// loadKeyFile reads the App key, or returns nil when the file does not exist
// yet (a key is then generated and written there).
func loadKeyFile(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ghsim: read app key: %w", err)
	}
	return b, nil
}

// logRequests writes one line per request to w, for someone watching the
// simulator in a terminal.
func logRequests(h http.Handler, w io.Writer) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		sr := &statusRecorder{ResponseWriter: rw, status: http.StatusOK}
		h.ServeHTTP(sr, r)
		fmt.Fprintf(w, "ghsim: %s %s %d\n", r.Method, r.URL.RequestURI(), sr.status)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}
