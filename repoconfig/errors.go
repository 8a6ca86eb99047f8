package repoconfig

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrNotFound is what a loader returns (wrapped) when the repository has no
// .stagely.yml at the requested commit. It is a load outcome, not a parse
// error: callers test it with errors.Is and treat the repository as not
// opted in, while a [*ParseError] is reported to the user on the PR.
var ErrNotFound = errors.New("repoconfig: no " + FileName + " in the repository")

// Error is one problem in a config file.
type Error struct {
	// Line and Column locate the problem, 1-based. Line 0 means the
	// problem concerns the file as a whole (too large, empty); Column 0
	// means the column is not known.
	Line, Column int
	// Field is the path of the value at fault, like "previews[0].port" or
	// "env.FOO"; empty for problems of the file's structure.
	Field string
	// Msg says what is wrong and, where it can, how to fix it.
	Msg string
}

// Error renders the problem as one line: `line 3: previews[0].port: must be
// between 1 and 65535`.
func (e Error) Error() string {
	var b strings.Builder
	if e.Line > 0 {
		b.WriteString("line ")
		b.WriteString(strconv.Itoa(e.Line))
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ParseError is every problem Parse found in a file, sorted by line and
// column. It always holds at least one.
type ParseError struct {
	Errs []Error
}

// maxRendered bounds how many problems ParseError.Error lists, so that a
// file with thousands of mistakes still fits in a Check Run.
const maxRendered = 50

// Error renders the problems one per line, the first maxRendered of them
// followed by a count of the rest.
func (e *ParseError) Error() string {
	var b strings.Builder
	for i, err := range e.Errs {
		if i == maxRendered {
			fmt.Fprintf(&b, "\n(and %d more problems)", len(e.Errs)-maxRendered)
			break
		}
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(err.Error())
	}
	return b.String()
}
