package repoconfig

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Limits that keep a hostile file cheap to reject. A 64 KiB file without
// aliases has far fewer than maxVisits nodes; only alias and merge-key
// expansion (a "billion laughs") can reach it.
const (
	maxVisits = 100_000
	maxErrors = 1000
)

// decoder walks a yaml.Node tree, collecting every problem it meets rather
// than stopping at the first.
type decoder struct {
	errs      []Error
	budget    int                 // nodes left to visit
	exhausted bool                // budget ran out; errs holds why
	merging   map[*yaml.Node]bool // mappings being read, to refuse cycles
}

// pair is one mapping entry; name is the key's text.
type pair struct {
	name     string
	key, val *yaml.Node
}

func (d *decoder) errorf(at *yaml.Node, field, format string, args ...any) {
	if len(d.errs) >= maxErrors {
		return
	}
	e := Error{Field: field, Msg: fmt.Sprintf(format, args...)}
	if at != nil {
		e.Line, e.Column = at.Line, at.Column
	}
	d.errs = append(d.errs, e)
}

// result returns the problems sorted by position, without repeats (a
// merged mapping is read once per merge).
func (d *decoder) result() []Error {
	if d.exhausted {
		// Everything else is likely an artefact of stopping half-way.
		for _, e := range d.errs {
			if e.Msg == budgetMsg {
				return []Error{e}
			}
		}
	}
	errs := slices.Clone(d.errs)
	slices.SortStableFunc(errs, func(a, b Error) int {
		if a.Line != b.Line {
			return a.Line - b.Line
		}
		return a.Column - b.Column
	})
	return slices.Compact(errs)
}

var budgetMsg = fmt.Sprintf("the file expands to more than %d values through anchors, aliases and merge keys; write it out more simply", maxVisits)

// visit spends one unit of the budget on n, and reports false once the
// budget is gone.
func (d *decoder) visit(n *yaml.Node) bool {
	if d.exhausted {
		return false
	}
	d.budget--
	if d.budget < 0 {
		d.exhausted = true
		d.errs = append(d.errs, Error{Line: n.Line, Column: n.Column, Msg: budgetMsg})
		return false
	}
	return true
}

// resolve follows an alias to its anchored node.
func resolve(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	n = resolve(n)
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// pairs lists mapping m's entries: its own keys in file order, then the keys
// brought in by merge keys ("<<") that m does not set itself. Duplicate and
// non-scalar keys are reported and left out.
func (d *decoder) pairs(m *yaml.Node, field string) []pair {
	d.merging[m] = true
	defer delete(d.merging, m)

	var own, merged []pair
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if !d.visit(k) {
			return nil
		}
		if k.Kind == yaml.ScalarNode && k.Value == "<<" && k.ShortTag() == "!!merge" {
			merged = append(merged, d.merge(v, field)...)
			continue
		}
		rk := resolve(k)
		if rk.Kind != yaml.ScalarNode {
			d.errorf(k, field, "keys must be plain words, got %s", describe(rk))
			continue
		}
		if first, ok := seen[rk.Value]; ok {
			d.errorf(k, field, "duplicate key %s (first on line %d)", quote(rk.Value), first.Line)
			continue
		}
		seen[rk.Value] = k
		own = append(own, pair{rk.Value, k, v})
	}
	for _, p := range merged {
		if _, ok := seen[p.name]; !ok {
			seen[p.name] = p.key
			own = append(own, p)
		}
	}
	return own
}

// merge returns the entries a merge key's value brings in: those of one
// mapping, or of a list of mappings where earlier ones win.
func (d *decoder) merge(v *yaml.Node, field string) []pair {
	rv := resolve(v)
	if rv.Kind != yaml.SequenceNode {
		return d.mergeOne(v, field)
	}
	var out []pair
	for _, it := range rv.Content {
		if !d.visit(it) {
			return out
		}
		out = append(out, d.mergeOne(it, field)...)
	}
	return out
}

// mergeOne returns the entries of the mapping n that a merge key names.
func (d *decoder) mergeOne(n *yaml.Node, field string) []pair {
	r := resolve(n)
	switch {
	case r.Kind != yaml.MappingNode:
		d.errorf(n, field, "a merge key (<<) takes a mapping or a list of mappings, got %s", describe(r))
		return nil
	case d.merging[r]:
		d.errorf(n, field, "a merge key (<<) refers to a mapping that contains it")
		return nil
	}
	return d.pairs(r, field)
}

// object reads n as a mapping whose keys must be among known, and returns
// the values by key. Keys with a null value are left out, as if absent.
// At the top level (field ""), keys starting with "x-" are ignored.
// It reports false when n is not a mapping.
func (d *decoder) object(n *yaml.Node, field string, known []string) (map[string]*yaml.Node, bool) {
	m, ok := d.mapping(n, field)
	if !ok {
		return nil, false
	}
	vals := map[string]*yaml.Node{}
	for _, p := range d.pairs(m, field) {
		if field == "" && strings.HasPrefix(p.name, "x-") {
			// Top-level "x-" keys are free, as in compose files: a
			// place to keep anchors for reuse.
			continue
		}
		if !slices.Contains(known, p.name) {
			d.errorf(p.key, field, "unknown key %s%s", quote(p.name), hint(p.name, known))
			continue
		}
		if !isNull(p.val) {
			vals[p.name] = p.val
		}
	}
	return vals, true
}

// hint says which known word s was probably meant to be, or lists them all.
func hint(s string, known []string) string {
	if k := suggest(s, known); k != "" {
		return fmt.Sprintf(" (did you mean %q?)", k)
	}
	return " (expected one of: " + strings.Join(known, ", ") + ")"
}

// suggest returns the known word closest to s, if it is close enough to be
// a typo of it, ignoring case and '-' for '_'.
func suggest(s string, known []string) string {
	norm := strings.ReplaceAll(strings.ToLower(s), "-", "_")
	best, bestDist := "", 3
	for _, k := range known {
		if d := distance(norm, k, bestDist); d < bestDist && d < len([]rune(s)) {
			best, bestDist = k, d
		}
	}
	return best
}

// distance is the edit distance between a and b, counting a swap of two
// neighbours as one edit (so "paht" is one away from "path"), or limit if
// it is at least limit (so a huge key costs no more than a short one).
func distance(a, b string, limit int) int {
	ra, rb := []rune(a), []rune(b)
	if len(ra)-len(rb) >= limit || len(rb)-len(ra) >= limit {
		return limit
	}
	// rows[i%3] is row i of the classic dynamic programming table.
	var rows [3][]int
	for i := range rows {
		rows[i] = make([]int, len(rb)+1)
	}
	for j := range rows[0] {
		rows[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur, prev, prev2 := rows[i%3], rows[(i-1)%3], rows[(i+1)%3]
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
	}
	return min(rows[len(ra)%3][len(rb)], limit)
}

func (d *decoder) mapping(n *yaml.Node, field string) (*yaml.Node, bool) {
	if r := resolve(n); r.Kind == yaml.MappingNode {
		return r, true
	}
	d.errorf(n, field, "must be a mapping of keys, got %s", describe(resolve(n)))
	return nil, false
}

// list returns the items of sequence n, as far as the budget allows.
func (d *decoder) list(n *yaml.Node, field string) ([]*yaml.Node, bool) {
	r := resolve(n)
	if r.Kind != yaml.SequenceNode {
		d.errorf(n, field, "must be a list, got %s", describe(r))
		return nil, false
	}
	for i, it := range r.Content {
		if !d.visit(it) {
			return r.Content[:i], true
		}
	}
	return r.Content, true
}

// str returns a string scalar's value.
func (d *decoder) str(n *yaml.Node, field string) (string, bool) {
	r := resolve(n)
	if r.Kind == yaml.ScalarNode && r.ShortTag() == "!!str" {
		return r.Value, true
	}
	msg := "must be a string, got " + describe(r)
	switch r.ShortTag() {
	case "!!int", "!!float", "!!bool", "!!timestamp":
		if r.Kind == yaml.ScalarNode {
			msg += fmt.Sprintf(" (put it in quotes: %q)", r.Value)
		}
	}
	d.errorf(n, field, "%s", msg)
	return "", false
}

// integer returns an integer scalar's value.
func (d *decoder) integer(n *yaml.Node, field string) (int, bool) {
	r := resolve(n)
	if r.Kind == yaml.ScalarNode && r.ShortTag() == "!!int" {
		var v int
		if err := r.Decode(&v); err == nil {
			return v, true
		}
	}
	msg := "must be a whole number, got " + describe(r)
	if r.Kind == yaml.ScalarNode && r.ShortTag() == "!!str" {
		if _, err := strconv.Atoi(r.Value); err == nil {
			msg += " (remove the quotes)"
		}
	}
	d.errorf(n, field, "%s", msg)
	return 0, false
}

// duration returns a duration scalar's value, checked against [lo, hi].
// Besides Go's syntax ("90s", "1h30m") it accepts whole days ("3d").
func (d *decoder) duration(n *yaml.Node, field string, lo, hi time.Duration) (time.Duration, bool) {
	r := resolve(n)
	if r.Kind == yaml.ScalarNode && (r.ShortTag() == "!!int" || r.ShortTag() == "!!float") {
		d.errorf(n, field, "must be a duration with a unit, like \"30m\" or \"72h\", got %s", describe(r))
		return 0, false
	}
	s, ok := d.str(n, field)
	if !ok {
		return 0, false
	}
	v, err := parseDuration(s)
	if err != nil {
		d.errorf(n, field, "must be a duration like \"30m\" or \"72h\", got %s", quote(s))
		return 0, false
	}
	if v < lo || v > hi {
		d.errorf(n, field, "must be between %s and %s, got %s", formatDuration(lo), formatDuration(hi), quote(s))
		return 0, false
	}
	return v, true
}

func parseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok && days != "" && strings.Trim(days, "0123456789") == "" {
		n, err := strconv.ParseInt(days, 10, 32)
		if err != nil || n > 100_000 {
			return 0, fmt.Errorf("too many days")
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}

// describe names what n is, for "got ..." in messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch tag := n.ShortTag(); tag {
		case "!!null":
			return "nothing"
		case "!!str":
			return quote(n.Value)
		case "!!int", "!!float", "!!bool", "!!timestamp":
			return clip(n.Value)
		default:
			return "a value tagged " + clip(tag)
		}
	}
	return "nothing"
}

// kind names what n is without quoting its value.
func kind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "nothing"
		case "!!str":
			return "a string"
		case "!!int", "!!float":
			return "a number"
		case "!!bool":
			return "true or false"
		case "!!timestamp":
			return "a date"
		}
	}
	return "a tagged value"
}

// quote quotes a user's text for a message, shortened if long.
func quote(s string) string {
	return strconv.Quote(clip(s))
}

func clip(s string) string {
	const max = 60
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	return string([]rune(s)[:max]) + "…"
}
