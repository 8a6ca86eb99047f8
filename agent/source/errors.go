package source

import (
	"errors"
	"fmt"
)

// Classes of refusal, for errors.Is.
var (
	// ErrUnsafePath: an absolute path or a ".." component.
	ErrUnsafePath = errors.New("unsafe path")
	// ErrEscapingLink: a symbolic or hard link that leads outside the
	// tree, or an entry written through a symbolic link.
	ErrEscapingLink = errors.New("link escapes the tree")
	// ErrSpecialFile: a device file, fifo or other non-regular entry.
	ErrSpecialFile = errors.New("special file")
	// ErrTooLarge: the files add up to more than Limits.MaxBytes.
	ErrTooLarge = errors.New("archive too large")
	// ErrTooManyEntries: more than Limits.MaxEntries entries.
	ErrTooManyEntries = errors.New("too many entries")
	// ErrLayout: an entry outside the top-level directory that
	// Options.StripTopLevel expects.
	ErrLayout = errors.New("unexpected archive layout")
)

// EntryError is a refusal of one archive entry.
type EntryError struct {
	// Entry is the entry's name as written in the archive.
	Entry string
	// Reason says what is wrong with it.
	Reason string
	// Err is one of the class errors above.
	Err error
}

// Error implements error.
func (e *EntryError) Error() string {
	return fmt.Sprintf("source archive entry %q: %s", e.Entry, e.Reason)
}

// Unwrap returns the class.
func (e *EntryError) Unwrap() error { return e.Err }

func refuse(entry string, class error, format string, args ...any) error {
	return &EntryError{Entry: entry, Reason: fmt.Sprintf(format, args...), Err: class}
}
