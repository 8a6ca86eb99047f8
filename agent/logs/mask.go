package logs

import (
	"sort"
	"strings"
)

// Mask replaces every secret value in a log line.
const Mask = "***"

// minPiece is the shortest line of a multi-line secret masked on its own:
// shorter pieces ("}", "") would blank out ordinary output.
const minPiece = 4

// Masker replaces secret values in lines. The zero value and nil mask
// nothing. Safe for concurrent use.
type Masker struct {
	terms    []string // longest first
	replacer *strings.Replacer
}

// NewMasker masks each non-empty value. A value spanning several lines is
// also masked line by line, since output is masked one line at a time.
func NewMasker(values []string) *Masker {
	seen := map[string]bool{}
	var terms []string
	add := func(s string) {
		if s != "" && !seen[s] {
			seen[s] = true
			terms = append(terms, s)
		}
	}
	for _, v := range values {
		add(v)
		if strings.ContainsAny(v, "\r\n") {
			for _, piece := range strings.FieldsFunc(v, func(r rune) bool { return r == '\n' || r == '\r' }) {
				if len(strings.TrimSpace(piece)) >= minPiece {
					add(piece)
				}
			}
		}
	}
	if len(terms) == 0 {
		return &Masker{}
	}
	// At each position the replacer tries terms in order: longest first,
	// so a secret containing another is masked whole.
	sort.SliceStable(terms, func(i, j int) bool { return len(terms[i]) > len(terms[j]) })
	pairs := make([]string, 0, 2*len(terms))
	for _, t := range terms {
		pairs = append(pairs, t, Mask)
	}
	return &Masker{terms: terms, replacer: strings.NewReplacer(pairs...)}
}

// Mask returns s with every secret value replaced by Mask.
func (m *Masker) Mask(s string) string {
	if m == nil || m.replacer == nil {
		return s
	}
	return m.replacer.Replace(s)
}

// longest is the length of the longest term.
func (m *Masker) longest() int {
	if m == nil || len(m.terms) == 0 {
		return 0
	}
	return len(m.terms[0])
}

// safeCut returns where a line too long to keep whole may be cut: at or
// after want, never inside a complete occurrence of a term, and early
// enough that a term only partly in s starts after the cut.
func (m *Masker) safeCut(s string, want int) int {
	cut := want
	for _, t := range m.termsOrNil() {
		for i := 0; ; {
			j := strings.Index(s[i:], t)
			if j < 0 {
				break
			}
			start, end := i+j, i+j+len(t)
			if start < cut && cut < end {
				cut = end
			}
			i = start + 1
		}
	}
	return cut
}

func (m *Masker) termsOrNil() []string {
	if m == nil {
		return nil
	}
	return m.terms
}
