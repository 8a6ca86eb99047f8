package checks

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// golden compares got with testdata/name.golden, or rewrites the file when
// the test runs with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -run '%s' -update creates it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -run '%s' -update rewrites it)\n--- got ---\n%s\n--- want ---\n%s", path, t.Name(), got, want)
	}
}

var t0 = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

const (
	sha      = "3f2c9a1b7d4e5f60718293a4b5c6d7e8f9012345"
	secret   = "hunter2-s3cr3t-Tok3n"
	pemLine  = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"
	pemLine2 = "c2VjcmV0IGxpbmUgdHdvIG9mIHRoZSBrZXk="
)

var pem = "-----BEGIN PRIVATE KEY-----\n" + pemLine + "\n" + pemLine2 + "\n-----END PRIVATE KEY-----\n"

// steps returns the usual deployment steps: the first done ones succeeded,
// the next is in state at, the rest are pending.
func steps(done int, at StepState) []Step {
	names := []string{"Read .stagely.yml", "Provision VM", "Wait for agent", "Build images", "Start services", "Health check", "Publish route"}
	var out []Step
	start := t0
	for i, n := range names {
		s := Step{Name: n, State: StepPending}
		switch {
		case i < done:
			s.State, s.StartedAt, s.FinishedAt = StepSucceeded, start, start.Add(time.Duration(5+i*20)*time.Second)
			start = s.FinishedAt
		case i == done && at != "":
			s.State, s.StartedAt = at, start
			if at != StepRunning {
				s.FinishedAt = start.Add(42 * time.Second)
			}
		case at == StepFailed || at == StepCancelled:
			s.State = StepSkipped
		}
		out = append(out, s)
	}
	return out
}

var previews = []Preview{
	{Name: "web", URL: "https://k3x9q2.preview.example.com"},
	{Name: "api", URL: "https://k3x9q2-api.preview.example.com"},
}

func reports() map[string]Report {
	return map[string]Report{
		"queued": {Status: "queued", SHA: sha, Now: t0},
		"in_progress": {
			Status: "in_progress", SHA: sha, Steps: steps(3, StepRunning), Now: t0.Add(3 * time.Minute),
		},
		"success": {
			Status: "completed", Conclusion: "success", SHA: sha, Steps: steps(7, ""),
			Previews: previews, Now: t0.Add(10 * time.Minute),
		},
		"failure": {
			Status: "completed", Conclusion: "failure", SHA: sha, Steps: steps(3, StepFailed),
			Err: "Step \"Build images\" failed: service web exited with code 1 while building.\n" +
				"The build used the token " + secret + ".\n" +
				"Fix the Dockerfile and push, or comment /stagely redeploy to retry.",
			LogTail: "\x1b[1m#7 [web 3/5] RUN npm ci\x1b[0m\n" +
				"#7 downloading 10%\rdownloading 55%\rdownloading 100%\n" +
				"#7 npm ERR! 401 Unauthorized: token " + secret + " rejected\n" +
				"#7 writing key " + pemLine + "\n" +
				"#7 ```not a fence end```\n" +
				"\x1b[31mERROR: failed to solve: process \"/bin/sh -c npm ci\" did not complete successfully: exit code: 1\x1b[0m\n",
			Secrets: []string{secret, pem, ""},
			Now:     t0.Add(4 * time.Minute),
		},
		"cancelled": {
			Status: "completed", Conclusion: "cancelled", SHA: sha, Steps: steps(2, StepCancelled),
			Reason: "superseded by 9e8d7c6", Now: t0.Add(2 * time.Minute),
		},
		"neutral": {
			Status: "completed", Conclusion: "neutral", SHA: sha, Steps: steps(7, ""),
			Reason: "environment destroyed", Now: t0.Add(time.Hour),
		},
		"action_required": {
			Status: "completed", Conclusion: "action_required", SHA: sha, Now: t0,
		},
	}
}

// show lays out everything GitHub receives for a report, for golden files.
func show(t *testing.T, r Report) string {
	t.Helper()
	out, err := Render(r)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "title: %s\n", out.GetTitle())
	for _, a := range Actions(r) {
		fmt.Fprintf(&b, "action: %s %q %q\n", a.Identifier, a.Label, a.Description)
	}
	if u := detailsURL(r); u != nil {
		fmt.Fprintf(&b, "details_url: %s\n", *u)
	}
	fmt.Fprintf(&b, "--- summary ---\n%s\n", out.GetSummary())
	if out.Text != nil {
		fmt.Fprintf(&b, "--- text ---\n%s\n", out.GetText())
	}
	return b.String()
}

func TestRenderMatchesGoldenFiles(t *testing.T) {
	for name, r := range reports() {
		t.Run(name, func(t *testing.T) {
			golden(t, "check_"+name, show(t, r))
		})
	}
}

func TestRenderFailureMasksSecretsInEveryField(t *testing.T) {
	r := reports()["failure"]
	r.Title = "Failed with " + secret
	r.Steps[0].Name = "Use " + secret
	out, err := Render(r)
	if err != nil {
		t.Fatal(err)
	}
	for field, v := range map[string]string{"title": out.GetTitle(), "summary": out.GetSummary(), "text": out.GetText()} {
		for _, s := range []string{secret, pemLine, pemLine2} {
			if strings.Contains(v, s) {
				t.Errorf("%s contains the secret %q:\n%s", field, s, v)
			}
		}
	}
	if !strings.Contains(out.GetText(), "token *** rejected") {
		t.Errorf("text does not show the masked log line:\n%s", out.GetText())
	}
}

func TestRenderFailureCleansTerminalOutput(t *testing.T) {
	out, err := Render(reports()["failure"])
	if err != nil {
		t.Fatal(err)
	}
	text := out.GetText()
	if strings.ContainsAny(text, "\x1b\r") {
		t.Errorf("text keeps escape sequences or carriage returns: %q", text)
	}
	if !strings.Contains(text, "\ndownloading 100%\n") || strings.Contains(text, "downloading 55%") {
		t.Errorf("a carriage-return progress line is not reduced to its final state:\n%s", text)
	}
}

func TestRenderRejectsInconsistentReports(t *testing.T) {
	for name, r := range map[string]Report{
		"unknown status":                {Status: "running"},
		"completed without conclusion":  {Status: "completed"},
		"unknown conclusion":            {Status: "completed", Conclusion: "timed_out"},
		"conclusion without completion": {Status: "in_progress", Conclusion: "success"},
	} {
		if _, err := Render(r); err == nil {
			t.Errorf("%s: Render accepted %+v", name, r)
		}
	}
}

func TestRenderEmptyStatusMeansQueued(t *testing.T) {
	out, err := Render(Report{SHA: sha})
	if err != nil {
		t.Fatal(err)
	}
	if out.GetTitle() != "Queued" || out.Text != nil {
		t.Errorf("title %q, text %v", out.GetTitle(), out.Text)
	}
}

func TestRenderTitleIsOneBoundedLine(t *testing.T) {
	r := Report{Status: "completed", Conclusion: "cancelled", Reason: strings.Repeat("é", 400) + "\nsecond line"}
	out, err := Render(r)
	if err != nil {
		t.Fatal(err)
	}
	title := out.GetTitle()
	if len(title) > maxTitleBytes || strings.Contains(title, "\n") || !utf8.ValidString(title) || !strings.HasSuffix(title, "…") {
		t.Errorf("title (%d bytes) = %q", len(title), title)
	}
}

var logLine = regexp.MustCompile(`^line \d{6} `)

func TestRenderHugeLogKeepsItsEndWithinGitHubsLimit(t *testing.T) {
	for name, filler := range map[string]string{
		"ascii":      strings.Repeat("x", 90),
		"multi-byte": strings.Repeat("日本語🙂", 9),
	} {
		t.Run(name, func(t *testing.T) {
			var b strings.Builder
			n := 0
			for b.Len() < 200<<10 {
				n++
				fmt.Fprintf(&b, "line %06d %s\n", n, filler)
			}
			last := fmt.Sprintf("line %06d %s", n, filler)
			r := reports()["failure"]
			r.LogTail = b.String()
			out, err := Render(r)
			if err != nil {
				t.Fatal(err)
			}
			text := out.GetText()
			if len(text) >= 65535 || !utf8.ValidString(text) {
				t.Fatalf("text is %d bytes, valid UTF-8: %v", len(text), utf8.ValidString(text))
			}
			if !strings.Contains(text, "earlier lines not shown") {
				t.Errorf("no note that the log was cut")
			}
			if !strings.Contains(text, last+"\n```") {
				t.Errorf("the last log line is missing")
			}
			_, log, _ := strings.Cut(text, "### Log")
			_, log, _ = strings.Cut(log, "```text\n")
			log, _, _ = strings.Cut(log, "\n```")
			for _, l := range strings.Split(log, "\n") {
				if !logLine.MatchString(l) || !strings.HasSuffix(l, filler) {
					t.Fatalf("log not cut at a line boundary: %q", l)
				}
			}
		})
	}
}

func TestRenderHugeSummaryIsTruncatedWithANote(t *testing.T) {
	r := reports()["success"]
	for i := range 3000 {
		r.Previews = append(r.Previews, Preview{Name: fmt.Sprintf("svc-%d-ü", i), URL: fmt.Sprintf("https://p%d.preview.example.com", i)})
	}
	out, err := Render(r)
	if err != nil {
		t.Fatal(err)
	}
	s := out.GetSummary()
	if len(s) >= 65535 || !utf8.ValidString(s) || !strings.HasSuffix(s, "\n"+truncatedNote) {
		t.Fatalf("summary is %d bytes, ends %q", len(s), s[max(0, len(s)-100):])
	}
	body := strings.TrimSuffix(s, "\n"+truncatedNote)
	if !strings.HasSuffix(body, ".preview.example.com> |") {
		t.Errorf("summary not cut after a whole line: %q", body[len(body)-60:])
	}
}

func TestRenderHugeErrorIsCut(t *testing.T) {
	r := reports()["failure"]
	r.Err = strings.Repeat("config problem on some line\n", 20000)
	r.LogTail = strings.Repeat("log\n", 50000)
	out, err := Render(r)
	if err != nil {
		t.Fatal(err)
	}
	if text := out.GetText(); len(text) >= 65535 || !strings.Contains(text, "(error truncated)") {
		t.Errorf("text is %d bytes", len(text))
	}
}

func TestActionsRespectGitHubLimits(t *testing.T) {
	want := map[string][]string{
		"queued":          nil,
		"in_progress":     nil,
		"success":         {ActionRedeploy, ActionDestroy},
		"failure":         {ActionRedeploy, ActionDestroy},
		"cancelled":       nil,
		"neutral":         {ActionRedeploy},
		"action_required": {ActionDeploy},
	}
	for name, r := range reports() {
		acts := Actions(r)
		if len(acts) > 3 {
			t.Errorf("%s: %d actions, GitHub accepts at most 3", name, len(acts))
		}
		var ids []string
		for _, a := range acts {
			ids = append(ids, a.Identifier)
			if n := utf8.RuneCountInString(a.Label); n == 0 || n > 20 {
				t.Errorf("%s: label %q has %d characters (1-20)", name, a.Label, n)
			}
			if n := utf8.RuneCountInString(a.Identifier); n == 0 || n > 20 {
				t.Errorf("%s: identifier %q has %d characters (1-20)", name, a.Identifier, n)
			}
			if n := utf8.RuneCountInString(a.Description); n == 0 || n > 40 {
				t.Errorf("%s: description %q has %d characters (1-40)", name, a.Description, n)
			}
		}
		if fmt.Sprint(ids) != fmt.Sprint(want[name]) {
			t.Errorf("%s: actions %v, want %v", name, ids, want[name])
		}
	}
}

func TestMask(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		secrets []string
		want    string
	}{
		{"every occurrence", "a=tok b=tok", []string{"tok"}, "a=*** b=***"},
		{"no secrets", "plain", nil, "plain"},
		{"blank secrets are ignored", "a b", []string{"", " ", "\n"}, "a b"},
		{"overlapping secrets leave no fragment", "xxabcdexx", []string{"abcd", "cde"}, "xx***xx"},
		{"longer secret containing a shorter one", "pass=hunter2hunter", []string{"hunter", "hunter2hunter"}, "pass=***"},
		{"secret with a trailing newline", "key=abc123 ok", []string{"abc123\n"}, "key=*** ok"},
		{"each line of a multi-line secret", "got line-one-xyz and line-two-xyz", []string{"line-one-xyz\nline-two-xyz\n"}, "got *** and ***"},
		{"short lines of a multi-line secret are kept", "a } b", []string{"longline1\n}\n"}, "a } b"},
		{"repeated characters", "aaaa", []string{"aa"}, "***"},
		{"multi-byte", "clé=日本語", []string{"日本語"}, "clé=***"},
	}
	for _, tt := range tests {
		if got := Mask(tt.in, tt.secrets); got != tt.want {
			t.Errorf("%s: Mask(%q) = %q, want %q", tt.name, tt.in, got, tt.want)
		}
	}
}

func TestKeepTail(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		budget  int
		want    string
		dropped int
	}{
		{"fits", "a\nb", 10, "a\nb", 0},
		{"starts at the next line", "one\ntwo\nthree", 7, "three", 2},
		{"already at a line start", "one\ntwo\nthree", 9, "two\nthree", 1},
		{"one long line cuts at a character", "aé日", 4, "日", 0},
	}
	for _, tt := range tests {
		got, dropped := keepTail(tt.in, tt.budget)
		if got != tt.want || dropped != tt.dropped {
			t.Errorf("%s: keepTail = %q, %d; want %q, %d", tt.name, got, dropped, tt.want, tt.dropped)
		}
	}
}
