package repoconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Parse reads a .stagely.yml. It returns the config with file-level
// defaults filled in, or a *ParseError listing every problem found, each
// with its line. It never returns any other error and never panics.
func Parse(data []byte) (cfg *Config, err error) {
	defer func() {
		// yaml.v3 is third-party code fed untrusted input; a panic in it
		// (or here) must fail this file, not the worker reading it.
		if r := recover(); r != nil {
			cfg, err = nil, &ParseError{Errs: []Error{{Msg: fmt.Sprintf("internal error reading the file: %v", r)}}}
		}
	}()
	if len(data) > MaxFileSize {
		return nil, &ParseError{Errs: []Error{{Msg: fmt.Sprintf(
			"file is %d bytes; the limit is %d (64 KiB)", len(data), MaxFileSize)}}}
	}
	root, yerr := parseYAML(data)
	if yerr != nil {
		return nil, &ParseError{Errs: []Error{*yerr}}
	}
	d := &decoder{budget: maxVisits, merging: map[*yaml.Node]bool{}}
	cfg = d.config(root)
	if errs := d.result(); len(errs) > 0 {
		return nil, &ParseError{Errs: errs}
	}
	return cfg, nil
}

// parseYAML turns data into the root node of its one document.
func parseYAML(data []byte) (*yaml.Node, *Error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &Error{Msg: emptyFile}
		}
		return nil, syntaxError(err, data)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, syntaxError(err, data)
	default:
		at := &next
		if len(next.Content) > 0 {
			at = next.Content[0]
		}
		return nil, &Error{Line: at.Line, Column: at.Column,
			Msg: `the file holds more than one YAML document; remove the "---" separator`}
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, &Error{Msg: emptyFile}
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		return nil, &Error{Msg: emptyFile}
	}
	return root, nil
}

const emptyFile = `file is empty; it needs at least "version: 1" and one entry under "previews"`

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parserProblems are the yaml.v3 parser (not scanner) errors. yaml.v3
// reports their line 0-based, and leaves it out on the first line.
var parserProblems = []string{
	"did not find expected <stream-start>",
	"did not find expected <document start>",
	"did not find expected node content",
	"did not find expected '-' indicator",
	"did not find expected key",
	"did not find expected ',' or ']'",
	"did not find expected ',' or '}'",
	"found undefined tag handle",
	"found duplicate %YAML directive",
	"found incompatible YAML document",
	"found duplicate %TAG directive",
}

// syntaxError turns a yaml.v3 syntax error into an Error with the best line
// number that can be had for it.
func syntaxError(err error, data []byte) *Error {
	msg := err.Error()
	line := 0
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	e := &Error{Line: line, Msg: "invalid YAML: " + msg}
	switch {
	case slices.Contains(parserProblems, msg):
		e.Line++
	case line != 0:
	case strings.HasPrefix(msg, "unknown anchor '"):
		name := strings.TrimSuffix(strings.TrimPrefix(msg, "unknown anchor '"), "' referenced")
		e.Line, e.Column = findAlias(data, name)
	default:
		// Reader errors (bad encoding, control characters) carry no
		// position; scanner errors on the first line carry none either.
		if l, c := findBadChar(data); l > 0 {
			e.Line, e.Column = l, c
		} else {
			e.Line = 1
		}
	}
	// yaml.v3 may place an error at end of input one line past the last.
	e.Line = min(e.Line, bytes.Count(data, []byte("\n"))+1)
	return e
}

// findAlias returns the position of the first use of alias *name.
func findAlias(data []byte, name string) (line, col int) {
	needle := []byte("*" + name)
	for i, l := range bytes.Split(data, []byte("\n")) {
		for off := 0; ; {
			j := bytes.Index(l[off:], needle)
			if j < 0 {
				break
			}
			end := off + j + len(needle)
			if end == len(l) || strings.IndexByte(" \t\r,]}#", l[end]) >= 0 {
				return i + 1, utf8.RuneCount(l[:off+j]) + 1
			}
			off = end
		}
	}
	return 0, 0
}

// findBadChar returns the position of the first byte sequence YAML refuses:
// invalid UTF-8, or a control character other than tab, CR and LF.
func findBadChar(data []byte) (line, col int) {
	line, col = 1, 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		bad := r == utf8.RuneError && size <= 1 ||
			r < 0x20 && r != '\t' && r != '\n' && r != '\r' ||
			r == 0x7f || r >= 0x80 && r <= 0x9f && r != 0x85 ||
			r == 0xfffe || r == 0xffff || r == 0xfeff && i > 0
		if bad {
			return line, col
		}
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
		i += size
	}
	return 0, 0
}
