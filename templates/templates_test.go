package templates

import (
	"io/fs"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestEveryTemplateParses(t *testing.T) {
	names, err := fs.Glob(FS, "*.tmpl")
	if err != nil {
		t.Fatal(err)
	}
	if len(names) < 2 {
		t.Fatalf("embedded templates: %v", names)
	}
	for _, name := range names {
		if _, err := Parse(name); err != nil {
			t.Errorf("Parse(%s): %v", name, err)
		}
	}
}

func TestParseUnknownTemplateFails(t *testing.T) {
	if _, err := Parse("nope.md.tmpl"); err == nil {
		t.Fatal("Parse of a missing template succeeded")
	}
}

func TestShortSHA(t *testing.T) {
	for in, want := range map[string]string{
		"0123456789abcdef0123456789abcdef01234567": "0123456",
		"abc": "abc",
		"":    "",
	} {
		if got := ShortSHA(in); got != want {
			t.Errorf("ShortSHA(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDurationFormatsToTheSecondAndBlanksUnknowns(t *testing.T) {
	t0 := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		start, end time.Time
		want       string
	}{
		{"sub-second rounds", t0, t0.Add(400 * time.Millisecond), "0s"},
		{"seconds", t0, t0.Add(12 * time.Second), "12s"},
		{"minutes pad seconds", t0, t0.Add(65 * time.Second), "1m05s"},
		{"hours pad minutes", t0, t0.Add(2*time.Hour + 3*time.Minute + 4*time.Second), "2h03m"},
		{"negative is zero", t0, t0.Add(-time.Minute), "0s"},
		{"no start", time.Time{}, t0, ""},
		{"no end", t0, time.Time{}, ""},
	}
	for _, tt := range tests {
		if got := duration(tt.start, tt.end); got != tt.want {
			t.Errorf("%s: duration = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestSpanSaysAPeriodInWords(t *testing.T) {
	for d, want := range map[time.Duration]string{
		72 * time.Hour:               "3 days",
		36 * time.Hour:               "1 day 12 hours",
		90 * time.Minute:             "1 hour 30 minutes",
		10 * time.Minute:             "10 minutes",
		time.Minute + 29*time.Second: "1 minute",
		24*time.Hour + time.Minute:   "1 day 1 minute",
		0:                            "",
		-time.Hour:                   "",
		20 * time.Second:             "",
		720 * time.Hour:              "30 days",
	} {
		if got := span(d); got != want {
			t.Errorf("span(%s) = %q, want %q", d, got, want)
		}
	}
}

func TestTimestampIsAbsoluteUTC(t *testing.T) {
	in := time.Date(2024, 5, 1, 14, 0, 5, 0, time.FixedZone("CEST", 2*3600))
	if got, want := timestamp(in), "2024-05-01 12:00:05 UTC"; got != want {
		t.Errorf("timestamp = %q, want %q", got, want)
	}
	if got := timestamp(time.Time{}); got != "" {
		t.Errorf("timestamp(zero) = %q, want empty", got)
	}
}

func TestCodeSpanCannotBeClosedByItsContent(t *testing.T) {
	tests := []struct{ in, want string }{
		{"redeploy", "`redeploy`"},
		{"a`b", "``a`b``"},
		{"`x", "`` `x ``"},
		{"two\nlines", "`two lines`"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := code(tt.in); got != tt.want {
			t.Errorf("code(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestFenceIsLongerThanAnyBacktickRunInside(t *testing.T) {
	got := fence("a\n`````\nb")
	if !strings.HasPrefix(got, "``````text\n") || !strings.HasSuffix(got, "\n``````") {
		t.Errorf("fence = %q", got)
	}
	if got := fence("plain"); got != "```text\nplain\n```" {
		t.Errorf("fence(plain) = %q", got)
	}
}

func TestLinkIsOneAutolinkItsURLCannotLeave(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://pr-7.preview.example.com", "<https://pr-7.preview.example.com>"},
		{"https://h.example/<[x](https://evil.example)", "<https://h.example/%3C[x](https://evil.example)>"},
		{"https://h.example/a>b|c d\te", "<https://h.example/a%3Eb%7Cc%20d%09e>"},
		{"HTTP://h.example/é", "<HTTP://h.example/é>"},
		{"javascript:alert(1)", "`javascript:alert(1)`"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := link(tt.in); got != tt.want {
			t.Errorf("link(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCellEscapesPipesAndNewlines(t *testing.T) {
	if got, want := cell("a|b\nc"), `a\|b c`; got != want {
		t.Errorf("cell = %q, want %q", got, want)
	}
}

func TestTruncate(t *testing.T) {
	const note = "[cut]"
	tests := []struct {
		name string
		in   string
		max  int
		want string
	}{
		{"fits", "one\ntwo", 7, "one\ntwo"},
		{"cuts at the last whole line", "one\ntwo\nthree\nfour", 14, "one\ntwo\n[cut]"},
		{"one long line cuts at a rune boundary", "ééééé", 9, "é\n[cut]"},
		{"budget smaller than note", "a long text", 4, "[cut"},
	}
	for _, tt := range tests {
		got := Truncate(tt.in, tt.max, note)
		if got != tt.want {
			t.Errorf("%s: Truncate = %q, want %q", tt.name, got, tt.want)
		}
		if len(got) > tt.max {
			t.Errorf("%s: len %d > max %d", tt.name, len(got), tt.max)
		}
		if !utf8.ValidString(got) {
			t.Errorf("%s: split a character: %q", tt.name, got)
		}
	}
}

func TestTruncateLargeMultiByteTextStaysValidAndBounded(t *testing.T) {
	line := strings.Repeat("日本語🙂", 50) + "\n"
	in := strings.Repeat(line, 2000) // about 1.3 MB
	got := Truncate(in, 65000, "[truncated]")
	if len(got) > 65000 || !utf8.ValidString(got) {
		t.Fatalf("len %d, valid %v", len(got), utf8.ValidString(got))
	}
	body := strings.TrimSuffix(got, "\n[truncated]")
	if body == got || !strings.HasSuffix(body, strings.TrimSuffix(line, "\n")) {
		t.Fatalf("not cut after a whole line: ...%q", got[len(got)-80:])
	}
}
