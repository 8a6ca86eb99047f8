// Package checks reports a deployment on its pull request through one
// Check Run named "Stagely preview": queued, then in progress with each step
// ticking, then a conclusion with the preview URLs, or with the error and
// the end of the log.
//
// Render and Actions turn a Report into what GitHub shows. They are pure,
// so golden files can pin the output. Reporter sends them through the small
// API interface (satisfied by *github.ChecksService). Ensure finds the run a
// deployment already has before creating one, so a crash between creating
// the run and saving its id never leaves two runs.
//
// The package does not decide anything: the reconciler owns state and says
// which Report to show. It never touches the database, and it never sees a
// secret that it is not told to mask.
//
// Which conclusion to use:
//
//	success          the preview is up; Previews holds its URLs
//	failure          a step failed; Err says which, why and what to do, LogTail has the log
//	cancelled        superseded by a newer commit (Reason: "superseded by abc1234")
//	neutral          nothing runs for this commit: the environment was destroyed (Reason says why)
//	action_required  a fork pull request waits for "/stagely deploy" from someone with write access
package checks

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/go-github/v60/github"

	"github.com/stagely-dev/stagely/templates"
)

// CheckName is the name of the Check Run on every pull request.
const CheckName = "Stagely preview"

// Identifiers of the Check Run buttons. They match the slash commands of
// package comments, so a requested_action can be handled as that command
// from the person who pressed the button.
const (
	ActionRedeploy = "redeploy"
	ActionDestroy  = "destroy"
	ActionDeploy   = "deploy"
)

// StepState is the state of one deployment step.
type StepState string

// Step states.
const (
	StepPending   StepState = "pending"
	StepRunning   StepState = "running"
	StepSucceeded StepState = "succeeded"
	StepFailed    StepState = "failed"
	StepSkipped   StepState = "skipped"
	StepCancelled StepState = "cancelled"
)

// Step is one step of a deployment as the Check Run lists it.
type Step struct {
	Name       string
	State      StepState
	StartedAt  time.Time // zero until the step starts
	FinishedAt time.Time // zero until the step ends
}

// Preview is one URL that a deployment serves.
type Preview struct {
	Name string // the preview's name in .stagely.yml, e.g. "web"
	URL  string
}

// Report is everything the Check Run shows at one moment.
type Report struct {
	Status     string // "queued" (the default when empty), "in_progress" or "completed"
	Conclusion string // only for "completed": "success", "failure", "cancelled", "neutral" or "action_required"
	Title      string // overrides the title derived from the state
	Steps      []Step
	Previews   []Preview // the first URL becomes details_url
	Err        string    // for failure: which step failed, why, and what the user can do
	LogTail    string    // raw end of the log; cleaned of terminal escapes and masked before it is shown
	Secrets    []string  // values replaced by "***" everywhere in the output
	Reason     string    // for cancelled and neutral: why, e.g. "superseded by abc1234", "environment destroyed"
	SHA        string    // the commit deployed
	Now        time.Time // the time of the report: running steps' durations, completed_at
}

// Size limits. GitHub caps output.summary and output.text at 65,535
// characters; a character is never more than one byte of UTF-8 per UTF-16
// unit, so staying under the same number of bytes is always safe, and the
// margin leaves room for GitHub's own accounting.
const (
	maxOutputBytes = 65000
	maxTitleBytes  = 255
	maxErrBytes    = 16 << 10
	truncatedNote  = "_… truncated: this output was too long for GitHub._"
)

// Render returns the Check Run output for r: a title, a summary (the state,
// the preview URLs and the step list) and, when there is an error or a log,
// a text with both. Every field is masked and kept under GitHub's limits,
// cut at a line boundary with a note saying so. A long log loses its oldest
// lines first, because the end of a log is where the error is.
func Render(r Report) (*github.CheckRunOutput, error) {
	r, err := normalize(r)
	if err != nil {
		return nil, err
	}
	v := newView(r)

	summary, err := templates.Execute("check_summary.md.tmpl", v)
	if err != nil {
		return nil, err
	}
	text, err := renderText(v)
	if err != nil {
		return nil, err
	}
	out := &github.CheckRunOutput{
		Title:   github.String(title(r, v)),
		Summary: github.String(fit(Mask(summary, r.Secrets))),
	}
	if text != "" {
		out.Text = github.String(fit(Mask(text, r.Secrets)))
	}
	return out, nil
}

// renderText renders output.text, dropping the oldest lines of the log
// when the whole would not fit.
func renderText(v view) (string, error) {
	if v.Err == "" && v.LogTail == "" {
		return "", nil
	}
	text, err := templates.Execute("check_text.md.tmpl", v)
	if err != nil || len(text) <= maxOutputBytes {
		return text, err
	}
	// 128 bytes leave room for the "N earlier lines not shown" heading.
	budget := maxOutputBytes - (len(text) - len(v.LogTail)) - 128
	v.LogTail, v.Omitted = keepTail(v.LogTail, budget)
	return templates.Execute("check_text.md.tmpl", v)
}

func fit(s string) string { return templates.Truncate(s, maxOutputBytes, truncatedNote) }

// Actions returns the buttons the Check Run offers for r, within GitHub's
// limits (at most three; label and identifier up to 20 characters,
// description up to 40):
//
//	queued, in_progress   none: GitHub shows a run's buttons only once it
//	                      completes, so a Destroy here could not stop a
//	                      build, and would outlive it on a cancelled run;
//	                      `/stagely destroy` stops a build
//	success, failure      Redeploy, Destroy
//	neutral               Redeploy (bring a destroyed preview back)
//	action_required       Approve & deploy (identifier "deploy")
//	cancelled             none: the newer run carries the buttons
//
// go-github omits an empty actions list from an update, so Update cannot
// take away buttons an earlier update set. The requested_action handler
// must therefore act on the pull request's environment as it is now, never
// on the commit of the run whose button was pressed, and must check the
// presser's permission.
func Actions(r Report) []*github.CheckRunAction {
	var (
		redeploy = &github.CheckRunAction{Label: "Redeploy", Identifier: ActionRedeploy, Description: "Rebuild and restart this preview"}
		destroy  = &github.CheckRunAction{Label: "Destroy", Identifier: ActionDestroy, Description: "Tear this preview environment down"}
		deploy   = &github.CheckRunAction{Label: "Approve & deploy", Identifier: ActionDeploy, Description: "Deploy this fork pull request"}
	)
	if r.Status != "completed" {
		return nil
	}
	switch r.Conclusion {
	case "success", "failure":
		return []*github.CheckRunAction{redeploy, destroy}
	case "neutral":
		return []*github.CheckRunAction{redeploy}
	case "action_required":
		return []*github.CheckRunAction{deploy}
	default:
		return nil
	}
}

// Mask replaces every occurrence of every secret in s with "***". Where
// occurrences overlap, the whole overlapping stretch becomes one "***", so
// no fragment of either survives. Blank secrets are ignored. A secret with
// surrounding white space is also masked trimmed, and each line (4 bytes or
// longer once trimmed) of a multi-line secret is masked on its own, because
// logs print such secrets line by line.
func Mask(s string, secrets []string) string {
	if s == "" {
		return s
	}
	var spans [][2]int
	for _, n := range needles(secrets) {
		for i := 0; i < len(s); {
			j := strings.Index(s[i:], n)
			if j < 0 {
				break
			}
			spans = append(spans, [2]int{i + j, i + j + len(n)})
			i += j + 1
		}
	}
	if len(spans) == 0 {
		return s
	}
	slices.SortFunc(spans, func(a, b [2]int) int { return a[0] - b[0] })
	var b strings.Builder
	last := 0 // end of the masked text written so far
	for i := 0; i < len(spans); {
		start, end := spans[i][0], spans[i][1]
		for i++; i < len(spans) && spans[i][0] <= end; i++ {
			end = max(end, spans[i][1])
		}
		b.WriteString(s[last:start])
		b.WriteString("***")
		last = end
	}
	b.WriteString(s[last:])
	return b.String()
}

func needles(secrets []string) []string {
	var out []string
	for _, s := range secrets {
		t := strings.TrimSpace(s)
		if t == "" {
			continue
		}
		out = append(out, s)
		if t != s {
			out = append(out, t)
		}
		if strings.ContainsAny(t, "\r\n") {
			for _, line := range strings.Split(t, "\n") {
				if line = strings.TrimSpace(line); len(line) >= 4 {
					out = append(out, line)
				}
			}
		}
	}
	return out
}

// normalize checks r and returns it with its defaults and its text masked.
func normalize(r Report) (Report, error) {
	switch r.Status {
	case "":
		r.Status = "queued"
	case "queued", "in_progress", "completed":
	default:
		return r, fmt.Errorf("check run status %q: want queued, in_progress or completed", r.Status)
	}
	if r.Status == "completed" {
		valid := []string{"success", "failure", "cancelled", "neutral", "action_required"}
		if !slices.Contains(valid, r.Conclusion) {
			return r, fmt.Errorf("check run conclusion %q: want one of %s", r.Conclusion, strings.Join(valid, ", "))
		}
	} else if r.Conclusion != "" {
		return r, fmt.Errorf("check run conclusion %q given with status %q: a conclusion needs status completed", r.Conclusion, r.Status)
	}

	r.Title = Mask(r.Title, r.Secrets)
	r.Reason = Mask(r.Reason, r.Secrets)
	r.Err = templates.Truncate(Mask(strings.TrimSpace(r.Err), r.Secrets), maxErrBytes, "… (error truncated)")
	r.LogTail = Mask(cleanLog(r.LogTail), r.Secrets)
	r.Steps = slices.Clone(r.Steps)
	for i := range r.Steps {
		r.Steps[i].Name = Mask(r.Steps[i].Name, r.Secrets)
	}
	r.Previews = slices.Clone(r.Previews)
	for i := range r.Previews {
		r.Previews[i].Name = Mask(r.Previews[i].Name, r.Secrets)
		r.Previews[i].URL = Mask(r.Previews[i].URL, r.Secrets)
	}
	return r, nil
}

// view is what the check_*.md.tmpl templates see.
type view struct {
	Status, Conclusion string
	SHA                string
	Reason             string
	FailedStep         string
	Steps              []stepRow
	Previews           []Preview
	Err                string
	LogTail            string
	Omitted            int // lines dropped from the start of LogTail
}

type stepRow struct {
	Icon, Name string
	Start, End time.Time // the template shows the duration between them, or nothing if either is zero
}

func newView(r Report) view {
	v := view{
		Status: r.Status, Conclusion: r.Conclusion, SHA: r.SHA, Reason: r.Reason,
		Previews: r.Previews, Err: r.Err, LogTail: r.LogTail,
	}
	for _, s := range r.Steps {
		end := s.FinishedAt
		if s.State == StepRunning && end.IsZero() {
			end = r.Now
		}
		v.Steps = append(v.Steps, stepRow{Icon: icon(s.State), Name: s.Name, Start: s.StartedAt, End: end})
		if s.State == StepFailed && v.FailedStep == "" {
			v.FailedStep = s.Name
		}
	}
	return v
}

func icon(s StepState) string {
	switch s {
	case StepPending:
		return "⏸️"
	case StepRunning:
		return "🔄"
	case StepSucceeded:
		return "✅"
	case StepFailed:
		return "❌"
	case StepSkipped:
		return "⏭️"
	case StepCancelled:
		return "🚫"
	default:
		return "❔"
	}
}

// title is the one line GitHub shows beside the check's name.
func title(r Report, v view) string {
	t := r.Title
	if t == "" {
		t = defaultTitle(r, v)
	}
	t = strings.Join(strings.Fields(t), " ") // one line
	if len(t) > maxTitleBytes {
		// Cutting bytes may leave half a character at the end; ToValidUTF8 drops it.
		t = strings.TrimSpace(strings.ToValidUTF8(t[:maxTitleBytes-len("…")], "")) + "…"
	}
	return t
}

func defaultTitle(r Report, v view) string {
	with := func(s, detail string) string {
		if detail == "" {
			return s
		}
		return s + ": " + detail
	}
	switch {
	case r.Status == "queued":
		return "Queued"
	case r.Status == "in_progress":
		running := ""
		for _, s := range r.Steps {
			if s.State == StepRunning {
				running = s.Name
				break
			}
		}
		return with("Deploying", running)
	case r.Conclusion == "success":
		if len(r.Previews) == 0 {
			return "Ready"
		}
		more := ""
		if n := len(r.Previews) - 1; n > 0 {
			more = fmt.Sprintf(" (and %d more)", n)
		}
		return "Ready: " + r.Previews[0].URL + more
	case r.Conclusion == "failure":
		return with("Failed", v.FailedStep)
	case r.Conclusion == "cancelled":
		return with("Cancelled", r.Reason)
	case r.Conclusion == "neutral":
		return with("No preview", r.Reason)
	default: // action_required
		return "Awaiting approval: pull request from a fork"
	}
}

// ansiEscape matches terminal escape sequences (colours, cursor moves,
// window titles) that docker and build tools print.
var ansiEscape = regexp.MustCompile(`\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]`)

// cleanLog makes a raw log readable as text: valid UTF-8, no terminal
// escapes, each carriage-return-rewritten line reduced to what a terminal
// would finally show, no other control characters, no blank lines at
// either end.
func cleanLog(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = ansiEscape.ReplaceAllString(s, "")
	lines := strings.Split(strings.ReplaceAll(s, "\r\n", "\n"), "\n")
	for i, line := range lines {
		line = strings.TrimRight(line, "\r")
		if j := strings.LastIndexByte(line, '\r'); j >= 0 {
			line = line[j+1:]
		}
		lines[i] = strings.Map(func(r rune) rune {
			if r == '\t' || (r >= 0x20 && r != 0x7f) {
				return r
			}
			return -1
		}, line)
	}
	return strings.Trim(strings.Join(lines, "\n"), "\n")
}

// keepTail returns the end of s in at most budget bytes, starting at a line
// boundary when one is in reach (else at a character boundary), and how
// many whole lines it dropped.
func keepTail(s string, budget int) (string, int) {
	if len(s) <= budget {
		return s, 0
	}
	start := len(s) - max(budget, 0)
	if start > 0 && s[start-1] != '\n' {
		if i := strings.IndexByte(s[start:], '\n'); i >= 0 && start+i+1 < len(s) {
			start += i + 1
		} else {
			for start < len(s) && !utf8.RuneStart(s[start]) {
				start++
			}
		}
	}
	return s[start:], strings.Count(s[:start], "\n")
}
