// Package templates holds Stagely's embedded text templates and the few
// functions they share: the sticky pull request comment, the Check Run
// output (summary and text) and the replies to slash commands. Cloud-init
// user data will live here too.
//
// The package renders text and nothing else. It does not call GitHub, read
// the database or choose what to say: package checks and package comments
// build the data, pick a template and keep the result within GitHub's size
// limits (Truncate helps with that). No template reads the clock. Callers
// pass explicit times, so the same input always renders the same text. That
// keeps golden files stable and lets an unchanged comment skip its edit.
package templates

import (
	"embed"
	"fmt"
	"strings"
	"text/template"
	"time"
	"unicode/utf8"
)

// FS holds every template. Markdown templates are named *.md.tmpl.
//
//go:embed *.tmpl
var FS embed.FS

// partials holds the {{define}} blocks that several templates share. Parse
// adds it to every template.
const partials = "partials.md.tmpl"

// Parse parses the template file name from FS, together with the shared
// partials, with the shared functions installed:
//
//	shortSHA  "0123456789abcdef" -> "0123456"
//	duration  start end          -> "1m05s" ("" when either is zero)
//	span      d                  -> "3 days", "1 hour 30 minutes" ("" when not positive)
//	timestamp t                  -> "2024-05-01 12:00:00 UTC" ("" when zero)
//	code      s                  -> an inline code span that s cannot break out of
//	fence     s                  -> a fenced code block that s cannot break out of
//	cell      s                  -> s made safe for one Markdown table cell
//	link      url                -> an autolink that url cannot break out of, safe in a table cell
func Parse(name string) (*template.Template, error) {
	t, err := template.New(name).Funcs(funcs()).Option("missingkey=error").ParseFS(FS, name, partials)
	if err != nil {
		return nil, fmt.Errorf("parse template %s: %w", name, err)
	}
	return t, nil
}

// Execute parses the template file name (see Parse) and executes it with
// data.
func Execute(name string, data any) (string, error) {
	t, err := Parse(name)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	if err := t.Execute(&b, data); err != nil {
		return "", fmt.Errorf("execute template %s: %w", name, err)
	}
	return b.String(), nil
}

// Truncate returns s when it is at most limit bytes long. Otherwise it cuts
// s at the last line boundary that leaves room for note and appends note,
// which should tell the reader that text was cut. The result is never
// longer than limit bytes. A single line longer than the budget is cut at a
// UTF-8 boundary, so the result never ends in half a character.
func Truncate(s string, limit int, note string) string {
	if len(s) <= limit {
		return s
	}
	if limit <= len(note) {
		return cutRunes(note, limit)
	}
	budget := limit - len(note) - 1 // room for the newline before note
	cut := cutRunes(s, budget)
	if i := strings.LastIndexByte(cut, '\n'); i > 0 {
		cut = cut[:i]
	}
	return cut + "\n" + note
}

// cutRunes returns the longest prefix of s that is at most n bytes and ends
// on a UTF-8 boundary.
func cutRunes(s string, n int) string {
	if n <= 0 {
		return ""
	}
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func funcs() template.FuncMap {
	return template.FuncMap{
		"shortSHA":  ShortSHA,
		"duration":  duration,
		"span":      span,
		"timestamp": timestamp,
		"code":      code,
		"fence":     fence,
		"cell":      cell,
		"link":      link,
	}
}

// ShortSHA abbreviates a commit SHA to the 7 characters GitHub shows.
func ShortSHA(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}

// duration formats end-start rounded to the second: "12s", "1m05s",
// "2h03m". It returns "" when either time is zero, because an unknown
// duration is better left blank than shown as a guess.
func duration(start, end time.Time) string {
	if start.IsZero() || end.IsZero() {
		return ""
	}
	d := end.Sub(start).Round(time.Second)
	if d < 0 {
		d = 0
	}
	h, m, s := d/time.Hour, d%time.Hour/time.Minute, d%time.Minute/time.Second
	switch {
	case h > 0:
		return fmt.Sprintf("%dh%02dm", h, m)
	case m > 0:
		return fmt.Sprintf("%dm%02ds", m, s)
	default:
		return fmt.Sprintf("%ds", s)
	}
}

// span writes a length of time the way a person says it, to the minute:
// "3 days", "1 day 12 hours", "90 minutes" is "1 hour 30 minutes". It is
// for configured periods (a time to live), not measured ones (duration).
func span(d time.Duration) string {
	d = d.Round(time.Minute)
	if d <= 0 {
		return ""
	}
	var parts []string
	for _, u := range []struct {
		size time.Duration
		name string
	}{{24 * time.Hour, "day"}, {time.Hour, "hour"}, {time.Minute, "minute"}} {
		n := d / u.size
		d -= n * u.size
		switch {
		case n == 1:
			parts = append(parts, "1 "+u.name)
		case n > 1:
			parts = append(parts, fmt.Sprintf("%d %ss", n, u.name))
		}
	}
	return strings.Join(parts, " ")
}

// timestamp formats t in UTC to the second. Never relative ("3 minutes
// ago"): the text would go stale the moment it is posted.
func timestamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// code wraps s in an inline code span whose backtick run is longer than any
// run inside s, so s cannot end the span early; newlines become spaces.
// Text in a code span renders literally: no links, no @mentions.
func code(s string) string {
	s = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s)
	if s == "" {
		return ""
	}
	ticks := strings.Repeat("`", longestRun(s, '`')+1)
	if strings.HasPrefix(s, "`") || strings.HasSuffix(s, "`") {
		s = " " + s + " "
	}
	return ticks + s + ticks
}

// fence wraps s in a fenced code block whose fence is longer than any
// backtick run inside s, so s cannot close it early.
func fence(s string) string {
	f := strings.Repeat("`", max(3, longestRun(s, '`')+1))
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	return f + "text\n" + s + f
}

// cell makes s safe for one Markdown table cell: pipes are escaped and
// line breaks become spaces.
func cell(s string) string {
	return strings.NewReplacer("|", `\|`, "\r\n", " ", "\n", " ", "\r", " ").Replace(s)
}

// link writes url as a CommonMark autolink, <url>, inside which GitHub
// parses no Markdown, HTML or @mention. A preview URL ends in a path from
// the pull request's .stagely.yml: written bare, GitHub's own linking of
// it stops at "<", and the rest would be a link, an image or a mention of
// the author's choosing. What an autolink cannot hold (white space,
// control characters, "<" and ">") and the "|" that would end a table
// cell are percent-encoded, which leaves the URL's meaning alone. Text
// that is no http(s) URL is not linked: it becomes a code span.
func link(url string) string {
	var b strings.Builder
	for i := 0; i < len(url); i++ {
		if c := url[i]; c <= ' ' || c == 0x7f || c == '<' || c == '>' || c == '|' {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	s := b.String()
	if lower := strings.ToLower(s); !strings.HasPrefix(lower, "https://") && !strings.HasPrefix(lower, "http://") {
		return code(url)
	}
	return "<" + s + ">"
}

func longestRun(s string, c byte) int {
	best, run := 0, 0
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			run++
			best = max(best, run)
		} else {
			run = 0
		}
	}
	return best
}
