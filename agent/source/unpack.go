package source

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"
)

// Limits bound what an archive may hold.
type Limits struct {
	// MaxBytes bounds the total size of the regular files, uncompressed.
	MaxBytes int64
	// MaxEntries bounds the number of entries of any kind.
	MaxEntries int
}

// DefaultLimits are generous for a repository and small for a VM's disk.
func DefaultLimits() Limits {
	return Limits{MaxBytes: 2 << 30, MaxEntries: 200_000}
}

// Options tune one Unpack.
type Options struct {
	Limits Limits
	// StripTopLevel removes the single top-level directory that wraps a
	// GitHub tarball (`owner-repo-sha/`); an entry outside it is refused.
	StripTopLevel bool
	// Previous, if set, is the tree of the previous deploy. A file whose
	// mode and content are the same there keeps that tree's modification
	// time, so the build context's differ sends only what changed.
	//
	// Every other file is stamped with the time it was written, not the
	// archive's: GitHub stamps every file with the commit's time, in whole
	// seconds, and Docker's build context transfer takes a file of the same
	// path, size and modification time as one it already holds to be
	// unchanged. Two commits made in the same second (or two environments
	// building on one engine) would otherwise build the other's bytes.
	Previous string
}

// Stats counts what Unpack wrote.
type Stats struct {
	Files, Dirs, Links int
	Bytes              int64
}

// Unpack reads a tar archive (gzip-compressed or not) from r into dir,
// which it creates and which should be empty. On error dir holds a partial
// tree that the caller removes.
func Unpack(ctx context.Context, r io.Reader, dir string, opts Options) (Stats, error) {
	if opts.Limits == (Limits{}) {
		opts.Limits = DefaultLimits()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Stats{}, fmt.Errorf("source: create %s: %w", dir, err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Stats{}, fmt.Errorf("source: open %s: %w", dir, err)
	}
	defer root.Close()

	br := bufio.NewReaderSize(r, 64<<10)
	var in io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return Stats{}, fmt.Errorf("source: gzip: %w", err)
		}
		defer zr.Close()
		in = zr
	}
	u := &unpacker{root: root, opts: opts, kinds: map[string]entryKind{}}
	if opts.Previous != "" {
		if prev, err := os.OpenRoot(opts.Previous); err == nil {
			defer prev.Close()
			u.prev = prev
		}
	}
	if err := u.run(ctx, tar.NewReader(in)); err != nil {
		return u.stats, err
	}
	return u.stats, nil
}

type entryKind uint8

const (
	kindDir entryKind = iota + 1
	kindFile
	kindSymlink
)

type unpacker struct {
	root    *os.Root
	prev    *os.Root // the previous tree, or nil
	opts    Options
	prefix  string               // the top-level directory being stripped
	kinds   map[string]entryKind // what each written path is
	links   []string             // symbolic links, checked again at the end
	entries int
	stats   Stats
}

func (u *unpacker) run(ctx context.Context, tr *tar.Reader) error {
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("source: %w", err)
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("source: read archive after %d entries: %w", u.entries, err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue // pax_global_header: GitHub's commit id, not a file
		}
		u.entries++
		if u.entries > u.opts.Limits.MaxEntries {
			return refuse(hdr.Name, ErrTooManyEntries, "more than %d entries", u.opts.Limits.MaxEntries)
		}
		if err := u.entry(hdr, tr); err != nil {
			return err
		}
	}
	for _, l := range u.links {
		if reason := u.escapes(l); reason != "" {
			return refuse(l, ErrEscapingLink, "symbolic link %s", reason)
		}
	}
	return nil
}

func (u *unpacker) entry(hdr *tar.Header, tr *tar.Reader) error {
	name, err := u.relPath(hdr.Name)
	if err != nil {
		return err
	}
	if name == "" {
		return nil // the stripped top-level directory itself
	}
	if under := u.symlinkAbove(name); under != "" {
		return refuse(hdr.Name, ErrEscapingLink, "lies under the symbolic link %q", under)
	}
	if u.kinds[name] == kindSymlink {
		return refuse(hdr.Name, ErrEscapingLink, "overwrites a symbolic link")
	}

	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := u.root.MkdirAll(name, 0o755); err != nil {
			return fmt.Errorf("source: entry %q: %w", hdr.Name, err)
		}
		u.kinds[name] = kindDir
		u.stats.Dirs++
	case tar.TypeReg: // the reader reports the old TypeRegA as TypeReg
		return u.file(hdr, name, tr)
	case tar.TypeSymlink:
		return u.symlink(hdr, name)
	case tar.TypeLink:
		return u.hardlink(hdr, name)
	case tar.TypeChar, tar.TypeBlock:
		return refuse(hdr.Name, ErrSpecialFile, "device files are not allowed")
	case tar.TypeFifo:
		return refuse(hdr.Name, ErrSpecialFile, "fifos are not allowed")
	default:
		return refuse(hdr.Name, ErrSpecialFile, "entry type %q is not allowed", hdr.Typeflag)
	}
	return nil
}

// relPath checks an archive name and returns it relative to the tree,
// with the top-level directory stripped when asked.
func (u *unpacker) relPath(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", refuse(name, ErrUnsafePath, "absolute paths are not allowed")
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", refuse(name, ErrUnsafePath, `".." is not allowed in a path`)
		}
	}
	rel := strings.TrimPrefix(path.Clean(name), "./")
	if rel == "." {
		rel = ""
	}
	if !u.opts.StripTopLevel {
		return rel, nil
	}
	top, rest, _ := strings.Cut(rel, "/")
	if u.prefix == "" {
		u.prefix = top
	}
	if top != u.prefix {
		return "", refuse(name, ErrLayout, "outside the archive's top-level directory %q", u.prefix)
	}
	return rest, nil
}

// symlinkAbove returns the first parent of name that is a symbolic link.
func (u *unpacker) symlinkAbove(name string) string {
	for i := 0; i < len(name); i++ {
		if name[i] == '/' && u.kinds[name[:i]] == kindSymlink {
			return name[:i]
		}
	}
	return ""
}

func (u *unpacker) file(hdr *tar.Header, name string, tr *tar.Reader) error {
	u.stats.Bytes += hdr.Size
	if u.stats.Bytes > u.opts.Limits.MaxBytes {
		return refuse(hdr.Name, ErrTooLarge, "files add up to more than %d bytes", u.opts.Limits.MaxBytes)
	}
	if dir := path.Dir(name); dir != "." {
		if err := u.root.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("source: entry %q: %w", hdr.Name, err)
		}
	}
	perm := fs.FileMode(hdr.Mode)&0o777 | 0o600
	f, err := u.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return fmt.Errorf("source: entry %q: %w", hdr.Name, err)
	}
	old, oldTime := u.previous(name, hdr.Size, perm)
	same, err := copyCompare(f, tr, old)
	if old != nil {
		old.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("source: entry %q: %w", hdr.Name, err)
	}
	// Set explicitly: the time a write leaves is the kernel's coarse clock,
	// shared by every file written within a few milliseconds.
	mtime := time.Now()
	if same && !oldTime.IsZero() {
		mtime = oldTime
	}
	_ = u.root.Chtimes(name, mtime, mtime)
	u.kinds[name] = kindFile
	u.stats.Files++
	return nil
}

// previous opens the previous tree's file at name if it could hold the
// same bytes: a regular file of that size and mode.
func (u *unpacker) previous(name string, size int64, perm fs.FileMode) (*os.File, time.Time) {
	if u.prev == nil {
		return nil, time.Time{}
	}
	fi, err := u.prev.Lstat(name)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != size || fi.Mode().Perm() != perm {
		return nil, time.Time{}
	}
	f, err := u.prev.Open(name)
	if err != nil {
		return nil, time.Time{}
	}
	return f, fi.ModTime()
}

// copyCompare copies src to dst and, when old is not nil, reports whether
// old held exactly the same bytes.
func copyCompare(dst io.Writer, src io.Reader, old io.Reader) (bool, error) {
	buf := make([]byte, 64<<10)
	oldBuf := make([]byte, len(buf))
	same := old != nil
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return false, err
			}
			if same {
				if _, err := io.ReadFull(old, oldBuf[:n]); err != nil || !bytes.Equal(buf[:n], oldBuf[:n]) {
					same = false
				}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return false, rerr
		}
	}
	if same {
		// old must end here too.
		if n, _ := old.Read(oldBuf[:1]); n != 0 {
			same = false
		}
	}
	return same, nil
}

func (u *unpacker) symlink(hdr *tar.Header, name string) error {
	target := hdr.Linkname
	if path.IsAbs(target) {
		return refuse(hdr.Name, ErrEscapingLink, "symbolic link to the absolute path %q", target)
	}
	if dest := path.Join(path.Dir(name), target); dest == ".." || strings.HasPrefix(dest, "../") {
		return refuse(hdr.Name, ErrEscapingLink, "symbolic link to %q leads outside the tree", target)
	}
	if dir := path.Dir(name); dir != "." {
		if err := u.root.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("source: entry %q: %w", hdr.Name, err)
		}
	}
	if err := u.root.Symlink(target, name); err != nil {
		return fmt.Errorf("source: entry %q: %w", hdr.Name, err)
	}
	u.kinds[name] = kindSymlink
	u.links = append(u.links, name)
	u.stats.Links++
	return nil
}

func (u *unpacker) hardlink(hdr *tar.Header, name string) error {
	target, err := u.relPath(hdr.Linkname)
	if err != nil {
		var ee *EntryError
		if errors.As(err, &ee) {
			return refuse(hdr.Name, ErrEscapingLink, "hard link to %q: %s", hdr.Linkname, ee.Reason)
		}
		return err
	}
	if u.kinds[target] != kindFile {
		return refuse(hdr.Name, ErrEscapingLink, "hard link to %q, which is not an earlier file of the archive", hdr.Linkname)
	}
	if dir := path.Dir(name); dir != "." {
		if err := u.root.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("source: entry %q: %w", hdr.Name, err)
		}
	}
	_ = u.root.Remove(name)
	if err := u.root.Link(target, name); err != nil {
		return fmt.Errorf("source: entry %q: %w", hdr.Name, err)
	}
	u.kinds[name] = kindFile
	u.stats.Links++
	return nil
}

// escapes follows the symbolic link at name, and every link on its way,
// on the unpacked tree, and says how it leaves the tree ("" if it does
// not). Links can only be judged together: each may look harmless alone.
func (u *unpacker) escapes(name string) string {
	todo := strings.Split(name, "/")
	var cur []string
	for hops := 0; len(todo) > 0; {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(cur) == 0 {
				return "leads outside the tree"
			}
			cur = cur[:len(cur)-1]
			continue
		}
		cur = append(cur, c)
		fi, err := u.root.Lstat(strings.Join(cur, "/"))
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			continue // a missing path is judged by its words alone
		}
		if hops++; hops > 40 {
			return "is part of a loop"
		}
		target, err := u.root.Readlink(strings.Join(cur, "/"))
		if err != nil {
			return "cannot be read"
		}
		if path.IsAbs(target) {
			return fmt.Sprintf("leads to the absolute path %q", target)
		}
		cur = cur[:len(cur)-1]
		todo = append(strings.Split(target, "/"), todo...)
	}
	return ""
}
