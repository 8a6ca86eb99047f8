// Package comments is Stagely's conversation on a pull request: it parses
// slash commands ("/stagely redeploy"), renders and keeps the one sticky
// comment that shows a preview's state and URLs, posts replies, adds
// reactions and looks up whether a commenter may run a command.
//
// It does not decide what a command does or who may run it: the caller
// checks CanWrite(Permission(...)) and turns a Command into desired state.
// It never touches the database. GitHub is reached through small
// interfaces (API, ReactionsAPI, PermissionsAPI) that go-github's
// services satisfy.
package comments

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/stagely-dev/stagely/templates"
)

// Kind is what a comment turned out to be.
type Kind int

const (
	// KindIgnore: the comment is not addressed to Stagely. Say nothing.
	KindIgnore Kind = iota
	// KindCommand: a command to act on, once the commenter's permission
	// has been checked.
	KindCommand
	// KindReply: the comment was addressed to Stagely but is no command to
	// act on (help, an unknown command, a usage error). Post Result.Reply.
	// Replies need no permission: they change nothing.
	KindReply
)

// Result is the outcome of parsing one comment: exactly one of ignore, a
// command, or a reply to post.
type Result struct {
	Kind    Kind
	Command Command // when Kind is KindCommand
	Reply   string  // when Kind is KindReply: Markdown to post
}

// Command is a command that changes something and needs write access.
type Command struct {
	Name string   // "redeploy", "destroy", "deploy" or "status"
	Args []string // always empty today: no command takes arguments
}

// prefix starts every command. It is matched without regard to case.
const prefix = "/stagely"

// commandNames lists the commands in the order help shows them. "help" is
// answered by Parse itself.
func commandNames() []string {
	return []string{"redeploy", "destroy", "deploy", "status", "help"}
}

// Parse reads one comment body. Only its first non-blank line counts, and
// only if that line starts with "/stagely" as a word of its own:
//
//	/stagely redeploy            -> Command redeploy (the prefix and the name in any case)
//	/stagely, /stagely help      -> Reply with help
//	/stagely redeplyo            -> Reply: unknown command, did you mean redeploy?
//	/stagely destroy now         -> Reply: destroy takes no arguments
//	anything else on line one    -> Ignore
//
// So quotes ("> /stagely redeploy"), code blocks (fenced or indented) and
// commands further down a comment are ignored, and the rest of a comment
// after its command line is free text. Arguments are split like a shell
// does (quotes group words); an unclosed quote or an argument that looks
// like a file path is answered with a usage reply. Parse never panics.
func Parse(body string) Result {
	line, ok := firstLine(body)
	if !ok {
		return Result{Kind: KindIgnore}
	}
	if len(line) < len(prefix) || !strings.EqualFold(line[:len(prefix)], prefix) {
		return Result{Kind: KindIgnore}
	}
	rest := line[len(prefix):]
	if r, _ := utf8.DecodeRuneInString(rest); rest != "" && !unicode.IsSpace(r) {
		return Result{Kind: KindIgnore} // "/stagelyfoo" is not ours
	}

	words, ok := splitWords(rest)
	if !ok {
		return reply("reply_usage.md.tmpl", usage{Problem: "quote"})
	}
	for _, w := range words {
		if looksLikePath(w) {
			return reply("reply_usage.md.tmpl", usage{Problem: "path", Arg: clip(w)})
		}
	}
	if len(words) == 0 {
		return reply("reply_help.md.tmpl", nil)
	}
	name, args := strings.ToLower(words[0]), words[1:]
	if !isCommand(name) {
		return reply("reply_unknown.md.tmpl", unknown{Name: clip(words[0]), Suggestion: suggest(name)})
	}
	if len(args) > 0 { // no command takes arguments
		return reply("reply_usage.md.tmpl", usage{Problem: "args", Command: name, Arg: clip(strings.Join(args, " "))})
	}
	if name == "help" {
		return reply("reply_help.md.tmpl", nil)
	}
	return Result{Kind: KindCommand, Command: Command{Name: name, Args: args}}
}

// firstLine returns the first non-blank line of body with its surrounding
// white space removed, and false when there is none or when it is indented
// four columns or more (a Markdown code block).
func firstLine(body string) (string, bool) {
	for body != "" {
		var line string
		line, body, _ = strings.Cut(body, "\n")
		trimmed := strings.TrimSpace(line)
		if trimmed == "" {
			continue
		}
		indent := 0
		for _, r := range line {
			if r == ' ' {
				indent++
			} else if r == '\t' {
				indent += 4
			} else {
				break
			}
		}
		return trimmed, indent < 4
	}
	return "", false
}

// splitWords splits s into words at white space. Single or double quotes
// group words and are removed; a backslash inside double quotes or outside
// quotes escapes the next character. It returns false for an unclosed
// quote.
func splitWords(s string) ([]string, bool) {
	var (
		words   []string
		cur     strings.Builder
		inWord  bool
		quote   rune
		escaped bool
	)
	for _, r := range s {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\' && quote != '\'':
			escaped, inWord = true, true
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case unicode.IsSpace(r):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 || escaped {
		return nil, false
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, true
}

// looksLikePath reports whether an argument could walk a file system:
// parent references, absolute or home paths, backslashes, or control
// characters. No command takes a path, so none of these is ever valid.
func looksLikePath(s string) bool {
	if strings.Contains(s, "..") || strings.ContainsAny(s, `\`) ||
		strings.HasPrefix(s, "/") || strings.HasPrefix(s, "~") {
		return true
	}
	return strings.ContainsFunc(s, unicode.IsControl)
}

func isCommand(name string) bool {
	for _, c := range commandNames() {
		if c == name {
			return true
		}
	}
	return false
}

// suggest returns the command an unknown name was most likely meant to be:
// the only command it is a prefix of (3 letters or more), or the nearest
// command within an edit distance of 2. It returns "" when nothing is
// close.
func suggest(name string) string {
	if len(name) > 64 {
		return ""
	}
	var prefixOf []string
	best, bestDist := "", 3
	for _, c := range commandNames() {
		if len(name) >= 3 && strings.HasPrefix(c, name) {
			prefixOf = append(prefixOf, c)
		}
		if d := distance(name, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	if len(prefixOf) == 1 {
		return prefixOf[0]
	}
	return best
}

// distance is the Levenshtein distance between a and b, in runes.
func distance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// clip shortens what a user wrote before it is quoted back, so a reply
// stays short whatever the comment held.
func clip(s string) string {
	const limit = 64
	if utf8.RuneCountInString(s) <= limit {
		return s
	}
	return string([]rune(s)[:limit]) + "…"
}

type unknown struct{ Name, Suggestion string }

type usage struct{ Problem, Command, Arg string }

// reply renders a reply template. The templates are embedded and tested,
// so failure is a bug; Parse must still answer, so it falls back to plain
// text rather than panic or go silent.
func reply(name string, data any) Result {
	s, err := templates.Execute(name, data)
	if err != nil {
		s = "Stagely could not read this command. Comment `/stagely help` for the list of commands."
	}
	return Result{Kind: KindReply, Reply: s}
}
