package comments

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
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

func TestParse(t *testing.T) {
	cmd := func(name string) Result { return Result{Kind: KindCommand, Command: Command{Name: name}} }
	ignore := Result{Kind: KindIgnore}
	tests := []struct {
		name string
		body string
		want Result
	}{
		{"redeploy", "/stagely redeploy", cmd("redeploy")},
		{"destroy", "/stagely destroy", cmd("destroy")},
		{"deploy", "/stagely deploy", cmd("deploy")},
		{"status", "/stagely status", cmd("status")},
		{"prefix in any case", "/StaGely redeploy", cmd("redeploy")},
		{"command in any case", "/stagely REDEPLOY", cmd("redeploy")},
		{"leading blank lines and spaces", "\n\n   /stagely redeploy  ", cmd("redeploy")},
		{"tabs between words", "/stagely\tdestroy", cmd("destroy")},
		{"windows line endings", "\r\n/stagely status\r\n", cmd("status")},
		{"text after the command line is free", "/stagely redeploy\nthe last build flaked\n/stagely destroy", cmd("redeploy")},
		{"normal text", "LGTM, thanks!", ignore},
		{"empty", "", ignore},
		{"blank", " \n\t\n", ignore},
		{"command on a later line", "Could someone run\n/stagely redeploy", ignore},
		{"quoted command", "> /stagely redeploy\n\nWhy did this run?", ignore},
		{"fenced code block", "```\n/stagely redeploy\n```", ignore},
		{"indented code block", "    /stagely redeploy", ignore},
		{"tab-indented code block", "\t/stagely redeploy", ignore},
		{"inline code", "`/stagely redeploy`", ignore},
		{"longer word", "/stagelyredeploy", ignore},
		{"other bot", "/atlantis plan", ignore},
		{"prefix mid-line", "please /stagely redeploy", ignore},
		{"look-alike letter", "/ſtagely redeploy", ignore},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Parse(tt.body)
			if got.Kind != tt.want.Kind || got.Command.Name != tt.want.Command.Name || len(got.Command.Args) != 0 {
				t.Errorf("Parse(%q) = %+v, want %+v", tt.body, got, tt.want)
			}
			if got.Kind != KindReply && got.Reply != "" {
				t.Errorf("Parse(%q) has a reply without KindReply", tt.body)
			}
		})
	}
}

func TestParseReplies(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		contains []string
	}{
		{"bare prefix is help", "/stagely", []string{"**Stagely commands**", "`/stagely redeploy`"}},
		{"help", "/stagely help", []string{"**Stagely commands**"}},
		{"help in capitals", "/STAGELY HELP", []string{"**Stagely commands**"}},
		{"typo suggests the nearest", "/stagely redeplyo", []string{"Unknown command `redeplyo`, did you mean `/stagely redeploy`?", "**Stagely commands**"}},
		{"prefix suggests the command", "/stagely dest", []string{"did you mean `/stagely destroy`?"}},
		{"one letter off", "/stagely statsu", []string{"did you mean `/stagely status`?"}},
		{"nothing close", "/stagely launch-the-rockets", []string{"Unknown command `launch-the-rockets`.", "**Stagely commands**"}},
		{"unknown keeps what was typed", "/stagely ReDePloyy", []string{"Unknown command `ReDePloyy`, did you mean `/stagely redeploy`?"}},
		{"markdown in unknown is quoted", "/stagely @everyone`x", []string{"Unknown command ``@everyone`x``."}},
		{"extra argument", "/stagely destroy now", []string{"`/stagely destroy` takes no arguments, but the comment gives `now`."}},
		{"extra arguments to help", "/stagely help me", []string{"`/stagely help` takes no arguments"}},
		{"quoted argument", `/stagely redeploy "right now"`, []string{"gives `right now`."}},
		{"unclosed quote", `/stagely redeploy "now`, []string{"a quote that is never closed"}},
		{"parent directory", "/stagely redeploy ../../etc/passwd", []string{"does not accept file paths", "`../../etc/passwd`"}},
		{"absolute path", "/stagely deploy /etc/passwd", []string{"does not accept file paths"}},
		{"home path", "/stagely deploy ~/x", []string{"does not accept file paths"}},
		{"quoted traversal", `/stagely deploy "a/../../b"`, []string{"does not accept file paths"}},
		{"traversal as the command", "/stagely ../x", []string{"does not accept file paths"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Parse(tt.body)
			if got.Kind != KindReply {
				t.Fatalf("Parse(%q).Kind = %v, want KindReply", tt.body, got.Kind)
			}
			for _, s := range tt.contains {
				if !strings.Contains(got.Reply, s) {
					t.Errorf("reply to %q lacks %q:\n%s", tt.body, s, got.Reply)
				}
			}
		})
	}
}

func TestParseQuotesBackAtMost64Characters(t *testing.T) {
	got := Parse("/stagely " + strings.Repeat("x", 10000))
	if got.Kind != KindReply || len(got.Reply) > 2000 || !strings.Contains(got.Reply, strings.Repeat("x", 64)+"…") {
		t.Errorf("reply is %d bytes:\n%.300s", len(got.Reply), got.Reply)
	}
}

func TestParseReplyGoldenFiles(t *testing.T) {
	for name, body := range map[string]string{
		"help":           "/stagely help",
		"unknown":        "/stagely redeplyo",
		"unknown_nohint": "/stagely frobnicate",
		"usage_args":     "/stagely destroy now please",
		"usage_path":     "/stagely deploy ../../secrets",
		"usage_quote":    `/stagely deploy "x`,
	} {
		t.Run(name, func(t *testing.T) {
			golden(t, "reply_"+name, Parse(body).Reply)
		})
	}
}

func TestHelpListsEveryCommand(t *testing.T) {
	help := Parse("/stagely help").Reply
	for _, c := range commandNames() {
		if !strings.Contains(help, "`/stagely "+c+"`") {
			t.Errorf("help does not list %s", c)
		}
	}
}

func TestSuggest(t *testing.T) {
	for in, want := range map[string]string{
		"redeploy": "redeploy",
		"redploy":  "redeploy",
		"destory":  "destroy",
		"depoly":   "deploy",
		"stat":     "status",
		"hepl":     "help",
		"de":       "",
		"xyz":      "",
		"deplo":    "deploy",
		"redepl":   "redeploy",
		"teardown": "",
		"statuses": "status",
	} {
		if got := suggest(in); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"", "/stagely", "/stagely help", "/stagely redeploy", "/STAGELY Destroy",
		"/stagely deploy ../../x", `/stagely deploy "unclosed`, `/stagely a\`, "/stagely 'a b' \"c d\"",
		"> /stagely redeploy", "```\n/stagely redeploy\n```", "    /stagely redeploy",
		"\r\n\t/stagely status\r\n", "/stagely \xff\xfe", "/stagely é日本🙂", "/stagely\u00a0help",
		"/stagely " + strings.Repeat("a", 300),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		r := Parse(body)
		switch r.Kind {
		case KindIgnore:
			if r.Reply != "" || r.Command.Name != "" {
				t.Fatalf("ignore with content: %+v", r)
			}
		case KindCommand:
			if !isCommand(r.Command.Name) || r.Command.Name == "help" || len(r.Command.Args) != 0 || r.Reply != "" {
				t.Fatalf("bad command: %+v", r)
			}
		case KindReply:
			if r.Reply == "" || len(r.Reply) > 8000 {
				t.Fatalf("reply of %d bytes", len(r.Reply))
			}
		default:
			t.Fatalf("unknown kind %d", r.Kind)
		}
		if utf8.ValidString(body) && !utf8.ValidString(r.Reply) {
			t.Fatalf("reply is not valid UTF-8: %q", r.Reply)
		}
	})
}
