package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/stagely-dev/stagely/checks"
	"github.com/stagely-dev/stagely/cmd/stagely/example"
	"github.com/stagely-dev/stagely/comments"
	"github.com/stagely-dev/stagely/ghsim"
	"github.com/stagely-dev/stagely/store"
)

type demoConfig struct {
	adminURL  string
	proxyAddr string
	hold      bool
	record    string
	keep      bool
}

// demoCommand is `stagely demo`: the server and its preview proxy, the
// GitHub simulator and the local provider in one process, driving the
// bundled example repository's pull request through its whole life on the
// real Docker engine.
func demoCommand(stdout, stderr io.Writer) *ffcli.Command {
	var cfg demoConfig
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.StringVar(&cfg.adminURL, "database-url", "postgres://stagely:stagely@127.0.0.1:5432/stagely?sslmode=disable",
		"Postgres URL through which the demo creates (and afterwards drops) a database of its own")
	fs.StringVar(&cfg.proxyAddr, "proxy-addr", "127.0.0.1:8088", "where previews are served; open http://<hash>.preview.localhost:<port> in a browser")
	fs.BoolVar(&cfg.hold, "hold", false, "stop once the preview is live and keep it up until Ctrl-C")
	fs.StringVar(&cfg.record, "ghsim-record", "", "write every GitHub API request the simulator receives as a JSON line (also STAGELY_GHSIM_RECORD)")
	fs.BoolVar(&cfg.keep, "keep-data", false, "keep the demo's database and data directory")
	c := &ffcli.Command{
		Name:       "demo",
		ShortUsage: "stagely demo [flags]",
		ShortHelp:  "the whole loop on this machine: PR → preview URL → push → redeploy → close",
		LongHelp:   "Opens a pull request on a simulated GitHub, prints each step as the Check Run shows it, the preview URL and its page, then pushes, redeploys and closes it.",
		FlagSet:    fs,
		Options:    ffOptions(),
		Exec: func(ctx context.Context, _ []string) error {
			if cfg.record == "" {
				cfg.record = os.Getenv("STAGELY_GHSIM_RECORD")
			}
			return runDemo(ctx, cfg, stdout, stderr)
		},
	}
	c.UsageFunc = usage
	return c
}

// demo holds the parts the demo drives.
type demo struct {
	out  io.Writer
	sim  *ghsim.Sim
	step string
}

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.out, format+"\n", args...) }

func runDemo(ctx context.Context, cfg demoConfig, stdout, stderr io.Writer) (err error) {
	d := &demo{out: stdout}
	defer func() {
		if err != nil && d.step != "" {
			err = fmt.Errorf("demo failed at %q: %w", d.step, err)
		}
	}()
	d.step = "set up"
	work, err := os.MkdirTemp("", "stagely-demo-")
	if err != nil {
		return err
	}
	if !cfg.keep {
		defer os.RemoveAll(work)
	}

	// A database of the demo's own.
	admin, err := store.Open(ctx, cfg.adminURL, 2)
	if err != nil {
		return fmt.Errorf("postgres (run scripts/services.sh first): %w", err)
	}
	defer admin.Close()
	dbName := fmt.Sprintf("stagely_demo_%d", os.Getpid())
	if _, err := admin.ExecContext(ctx, `CREATE DATABASE "`+dbName+`"`); err != nil {
		return fmt.Errorf("create the demo database: %w", err)
	}
	if !cfg.keep {
		defer admin.ExecContext(context.WithoutCancel(ctx), `DROP DATABASE IF EXISTS "`+dbName+`" WITH (FORCE)`)
	}
	u, err := url.Parse(cfg.adminURL)
	if err != nil {
		return err
	}
	u.Path = "/" + dbName
	db, err := store.Open(ctx, u.String(), 4)
	if err != nil {
		return err
	}
	defer db.Close()

	// The simulated GitHub.
	secret := "demo-webhook-secret-0123456789abcdef"
	sim, err := ghsim.New(ghsim.Config{AppID: 1, AppSlug: "stagely", WebhookSecret: secret, RecordPath: cfg.record})
	if err != nil {
		return err
	}
	defer sim.Close()
	d.sim = sim
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	simSrv := &http.Server{Handler: sim, ReadHeaderTimeout: 10 * time.Second}
	go simSrv.Serve(sln)
	defer simSrv.Close()
	simURL := "http://" + sln.Addr().String()
	sim.SetBaseURL(simURL)
	keyFile := filepath.Join(work, "app.pem")
	if err := os.WriteFile(keyFile, sim.AppPrivateKeyPEM(), 0o600); err != nil {
		return err
	}

	// The server, with its preview proxy and the local provider.
	sctx, stopServer := context.WithCancel(ctx)
	defer stopServer()
	addrc, errc := make(chan string, 1), make(chan error, 1)
	scfg := serverConfig{
		addr: "127.0.0.1:0", databaseURL: u.String(), webhookSecret: secret, githubURL: simURL + "/",
		appID: 1, appKeyFile: keyFile, workers: 4, lease: 10 * time.Second, poll: time.Second,
		defaultTTL: 72 * time.Hour, logLevel: "warn", logFormat: "console",
		fleet: fleetConfig{provider: "local", dataDir: filepath.Join(work, "data"), previewDomain: "preview.localhost",
			proxyAddr: cfg.proxyAddr, tunnelAddr: "127.0.0.1:0"},
	}
	go func() { errc <- runServer(sctx, scfg, stderr, serverDeps{listening: func(a string) { addrc <- a }}) }()
	select {
	case a := <-addrc:
		sim.SetWebhookURL("http://" + a + "/api/github/hook")
	case err := <-errc:
		return fmt.Errorf("start the server: %w", err)
	}
	defer func() {
		stopServer()
		<-errc
	}()

	d.step = "build the example app"
	d.say("Building the example app (two services, FROM scratch, one static Go binary)…")
	bin, err := example.Build(ctx, work)
	if err != nil {
		return err
	}
	const owner, repo = "acme", "shop"
	if _, err := sim.CreateInstallation(ctx, ghsim.InstallationSpec{Account: owner}); err != nil {
		return err
	}
	if _, err := sim.CreateRepo(ctx, ghsim.RepoSpec{Owner: owner, Name: repo, Files: example.Files(bin, "Hello from the main branch")}); err != nil {
		return err
	}

	d.step = "open a pull request"
	pr, err := sim.OpenPR(ctx, ghsim.PRSpec{Owner: owner, Repo: repo, Head: "feature/greeting", Title: "A friendlier greeting",
		Files: map[string]string{"backend/message.txt": "Hello from pull request #1\n"}})
	if err != nil {
		return err
	}
	d.say("\nOpened pull request #%d at %s. Stagely's Check Run:", pr.Number, pr.SHA[:7])
	run, err := d.follow(ctx, owner, repo, pr.SHA, 5*time.Minute)
	if err != nil {
		return err
	}
	d.step = "fetch the preview"
	page, err := fetch(ctx, run.DetailsURL, "pull request #1")
	if err != nil {
		return err
	}
	d.say("\nPreview: %s\n%s", run.DetailsURL, indent(page))
	if err := d.showComment(owner, repo, pr.Number); err != nil {
		return err
	}
	if cfg.hold {
		d.say("\nThe preview stays up until Ctrl-C. Open %s in a browser on this machine.", run.DetailsURL)
		<-ctx.Done()
		return nil
	}

	d.step = "push a change"
	push, err := sim.PushToPR(ctx, ghsim.PushSpec{Owner: owner, Repo: repo, Number: pr.Number,
		Files: map[string]string{"backend/message.txt": "Hello again, after a push\n"}, Message: "Say hello again"})
	if err != nil {
		return err
	}
	d.say("\nPushed %s. The same environment redeploys:", push.SHA[:7])
	run, err = d.follow(ctx, owner, repo, push.SHA, 5*time.Minute)
	if err != nil {
		return err
	}
	if page, err = fetch(ctx, run.DetailsURL, "after a push"); err != nil {
		return err
	}
	d.say("\n%s now serves:\n%s", run.DetailsURL, indent(page))

	d.step = "comment /stagely redeploy"
	c, err := sim.Comment(ctx, ghsim.CommentSpec{Owner: owner, Repo: repo, Number: pr.Number, User: "maintainer", Permission: "write", Body: "/stagely redeploy"})
	if err != nil {
		return err
	}
	d.say("\nA maintainer commented `/stagely redeploy`:")
	if err := d.waitReaction(ctx, owner, repo, c.ID, "rocket", 5*time.Minute); err != nil {
		return err
	}
	d.say("  Stagely reacted 👀, redeployed, and reacted 🚀.")

	d.step = "close the pull request"
	if _, err := sim.ClosePR(ctx, owner, repo, pr.Number, true, "maintainer"); err != nil {
		return err
	}
	d.say("\nMerged and closed the pull request. Teardown:")
	if err := d.waitComment(ctx, owner, repo, pr.Number, "Stagely preview: destroyed", 3*time.Minute); err != nil {
		return err
	}
	code, err := status(ctx, run.DetailsURL)
	if err != nil {
		return err
	}
	if code != http.StatusNotFound {
		return fmt.Errorf("the preview URL answers %d after teardown, want 404", code)
	}
	d.say("  The comment says destroyed; %s now answers 404; the machine and its containers are gone.", run.DetailsURL)
	d.step = ""
	d.say("\nDone.")
	return nil
}

// follow prints the Check Run's steps on sha as they change until it
// completes, and returns it; anything but success is an error.
func (d *demo) follow(ctx context.Context, owner, repo, sha string, within time.Duration) (ghsim.CheckRun, error) {
	deadline := time.Now().Add(within)
	printed := map[string]string{}
	for time.Now().Before(deadline) {
		runs, err := d.sim.CheckRuns(owner, repo, sha)
		if err != nil {
			return ghsim.CheckRun{}, err
		}
		var run *ghsim.CheckRun
		for i := range runs {
			if runs[i].Name == checks.CheckName {
				run = &runs[i]
			}
		}
		if run != nil {
			for _, line := range strings.Split(run.Summary, "\n") {
				name, state, ok := stepLine(line)
				if ok && printed[name] != state {
					printed[name] = state
					d.say("  %s", strings.TrimSpace(strings.Trim(line, "|")))
				}
			}
			if run.Status == "completed" {
				if run.Conclusion != "success" {
					return *run, fmt.Errorf("check run concluded %s: %s\n%s", run.Conclusion, run.Title, run.Text)
				}
				d.say("  → %s: %s", run.Conclusion, run.Title)
				return *run, nil
			}
		}
		select {
		case <-ctx.Done():
			return ghsim.CheckRun{}, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return ghsim.CheckRun{}, fmt.Errorf("no completed check run on %s within %s", sha[:7], within)
}

// stepLine picks a step row out of the check run summary's table.
func stepLine(line string) (name, state string, ok bool) {
	cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
	if len(cells) < 3 || strings.Contains(line, "---") || strings.Contains(strings.ToLower(cells[0]+cells[1]), "step") {
		return "", "", false
	}
	return strings.TrimSpace(cells[1]), strings.TrimSpace(cells[0]) + strings.TrimSpace(cells[2]), true
}

func (d *demo) showComment(owner, repo string, pr int) error {
	cs, err := d.sim.Comments(owner, repo, pr)
	if err != nil {
		return err
	}
	for _, c := range cs {
		if c.User == d.sim.BotLogin() && strings.Contains(c.Body, comments.Marker) {
			first := strings.SplitN(strings.TrimSpace(strings.TrimPrefix(c.Body, comments.Marker)), "\n", 2)[0]
			d.say("The PR comment: %s", strings.TrimLeft(first, "# "))
		}
	}
	return nil
}

func (d *demo) waitComment(ctx context.Context, owner, repo string, pr int, want string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		cs, err := d.sim.Comments(owner, repo, pr)
		if err != nil {
			return err
		}
		for _, c := range cs {
			if c.User == d.sim.BotLogin() && strings.Contains(c.Body, want) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("the PR comment never said %q", want)
}

func (d *demo) waitReaction(ctx context.Context, owner, repo string, comment int64, want string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		rs, err := d.sim.Reactions(owner, repo, comment)
		if err != nil {
			return err
		}
		for _, r := range rs {
			if r.Content == want {
				return nil
			}
			if r.Content == "confused" {
				return errors.New("the redeploy failed: Stagely reacted 😕")
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("no %s reaction within %s", want, within)
}

// client reaches preview URLs: *.localhost names are the loopback, as a
// browser on this machine resolves them.
func previewClient(raw string) (*http.Client, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, net.JoinHostPort("127.0.0.1", u.Port()))
		},
	}}, nil
}

func fetch(ctx context.Context, raw, want string) (string, error) {
	c, err := previewClient(raw)
	if err != nil {
		return "", err
	}
	var last string
	for range 50 {
		resp, err := c.Get(raw)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = fmt.Sprintf("%d %s", resp.StatusCode, b)
			if resp.StatusCode == 200 && strings.Contains(string(b), want) {
				return string(b), nil
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("%s did not serve %q: %s", raw, want, last)
}

func status(ctx context.Context, raw string) (int, error) {
	c, err := previewClient(raw)
	if err != nil {
		return 0, err
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, raw, nil)
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n  ")
}
