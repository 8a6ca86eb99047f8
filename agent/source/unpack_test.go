package source_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/agent/source"
)

// entry is one tar entry to write.
type entry struct {
	name string
	typ  byte
	body string
	link string
}

func file(name, body string) entry { return entry{name: name, typ: tar.TypeReg, body: body} }
func dir(name string) entry        { return entry{name: name, typ: tar.TypeDir} }
func symlink(name, to string) entry {
	return entry{name: name, typ: tar.TypeSymlink, link: to}
}
func hardlink(name, to string) entry { return entry{name: name, typ: tar.TypeLink, link: to} }

var mtime = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

func archive(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: 0o644, ModTime: mtime, Format: tar.FormatPAX}
		if e.typ == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if e.typ == tar.TypeXGlobalHeader {
			hdr = &tar.Header{Typeflag: e.typ, PAXRecords: map[string]string{"comment": "0123abcd"}, Format: tar.FormatPAX}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if e.body != "" {
			tw.Write([]byte(e.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// github wraps entries the way GitHub's tarball endpoint does.
func github(entries ...entry) []entry {
	out := []entry{{name: "pax_global_header", typ: tar.TypeXGlobalHeader}, dir("owner-repo-0123abcd/")}
	for _, e := range entries {
		e.name = "owner-repo-0123abcd/" + e.name
		if e.typ == tar.TypeLink {
			e.link = "owner-repo-0123abcd/" + e.link
		}
		out = append(out, e)
	}
	return out
}

func TestUnpackStripsGitHubWrappingAndKeepsTheTree(t *testing.T) {
	data := archive(t, github(
		file("compose.yaml", "services: {}\n"),
		dir("web/"),
		file("web/Dockerfile", "FROM scratch\n"),
		symlink("web/compose.yaml", "../compose.yaml"),
		hardlink("copy.yaml", "compose.yaml"),
	)...)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(data)
	zw.Close()

	for name, in := range map[string][]byte{"plain": data, "gzip": gz.Bytes()} {
		t.Run(name, func(t *testing.T) {
			dst := t.TempDir()
			st, err := source.Unpack(context.Background(), bytes.NewReader(in), dst, source.Options{StripTopLevel: true})
			if err != nil {
				t.Fatal(err)
			}
			if st.Files != 2 || st.Links != 2 || st.Dirs != 1 {
				t.Fatalf("stats = %+v", st)
			}
			got, err := os.ReadFile(filepath.Join(dst, "web", "compose.yaml"))
			if err != nil || string(got) != "services: {}\n" {
				t.Fatalf("link inside the tree: %q, %v", got, err)
			}
			fi, err := os.Stat(filepath.Join(dst, "web", "Dockerfile"))
			if err != nil {
				t.Fatal(err)
			}
			if fi.ModTime().Equal(mtime) {
				t.Fatalf("mtime is the archive's %v: another tree's file of that size would pass for it", mtime)
			}
			if _, err := os.Stat(filepath.Join(dst, "pax_global_header")); !os.IsNotExist(err) {
				t.Fatal("pax_global_header was written as a file")
			}
		})
	}
}

func TestUnpackRefusesWhatReachesOutside(t *testing.T) {
	tests := []struct {
		name      string
		entries   []entry
		strip     bool
		limits    source.Limits
		want      error
		wantEntry string
		wantWords string
	}{
		{name: "absolute path", entries: []entry{file("/etc/cron.d/evil", "x")},
			want: source.ErrUnsafePath, wantEntry: "/etc/cron.d/evil", wantWords: "absolute"},
		{name: "dot-dot path", entries: []entry{file("../evil", "x")},
			want: source.ErrUnsafePath, wantEntry: "../evil", wantWords: `".."`},
		{name: "dot-dot inside a path", entries: []entry{file("a/../../evil", "x")},
			want: source.ErrUnsafePath, wantEntry: "a/../../evil"},
		{name: "dot-dot after stripping", entries: github(file("../../evil", "x")), strip: true,
			want: source.ErrUnsafePath, wantEntry: "owner-repo-0123abcd/../../evil"},
		{name: "symlink to an absolute path", entries: []entry{symlink("passwd", "/etc/passwd")},
			want: source.ErrEscapingLink, wantEntry: "passwd", wantWords: "/etc/passwd"},
		{name: "symlink climbing out", entries: []entry{dir("a/"), symlink("a/up", "../../etc")},
			want: source.ErrEscapingLink, wantEntry: "a/up"},
		{name: "symlinks that escape only together", entries: []entry{
			dir("a/"), dir("a/b/"), symlink("a/b/s", "../.."), symlink("t", "a/b/s/.."),
		}, want: source.ErrEscapingLink, wantEntry: "t"},
		{name: "symlink loop", entries: []entry{symlink("x", "y"), symlink("y", "x")},
			want: source.ErrEscapingLink, wantWords: "loop"},
		{name: "file written through a symlink", entries: []entry{dir("sub/"), symlink("d", "sub"), file("d/x", "x")},
			want: source.ErrEscapingLink, wantEntry: "d/x", wantWords: `symbolic link "d"`},
		{name: "hard link out of the tree", entries: []entry{hardlink("shadow", "../../etc/shadow")},
			want: source.ErrEscapingLink, wantEntry: "shadow"},
		{name: "hard link to an absolute path", entries: []entry{hardlink("shadow", "/etc/shadow")},
			want: source.ErrEscapingLink, wantEntry: "shadow"},
		{name: "hard link to nothing in the archive", entries: []entry{hardlink("h", "missing")},
			want: source.ErrEscapingLink, wantEntry: "h"},
		{name: "character device", entries: []entry{{name: "null", typ: tar.TypeChar}},
			want: source.ErrSpecialFile, wantEntry: "null", wantWords: "device"},
		{name: "block device", entries: []entry{{name: "sda", typ: tar.TypeBlock}},
			want: source.ErrSpecialFile, wantEntry: "sda"},
		{name: "fifo", entries: []entry{{name: "pipe", typ: tar.TypeFifo}},
			want: source.ErrSpecialFile, wantEntry: "pipe", wantWords: "fifo"},
		{name: "too many bytes", entries: []entry{file("a", "12345"), file("b", "67890")},
			limits: source.Limits{MaxBytes: 8, MaxEntries: 10}, want: source.ErrTooLarge, wantEntry: "b"},
		{name: "too many entries", entries: []entry{file("a", ""), file("b", ""), file("c", "")},
			limits: source.Limits{MaxBytes: 8, MaxEntries: 2}, want: source.ErrTooManyEntries, wantEntry: "c"},
		{name: "entry beside the top-level directory", entries: append(github(file("a", "")), file("other/b", "")),
			strip: true, want: source.ErrLayout, wantEntry: "other/b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			dst := filepath.Join(parent, "src")
			_, err := source.Unpack(context.Background(), bytes.NewReader(archive(t, tt.entries...)), dst,
				source.Options{StripTopLevel: tt.strip, Limits: tt.limits})
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			var ee *source.EntryError
			if !errors.As(err, &ee) {
				t.Fatalf("err %v is not an EntryError", err)
			}
			if tt.wantEntry != "" && ee.Entry != tt.wantEntry {
				t.Fatalf("refused entry %q, want %q (%v)", ee.Entry, tt.wantEntry, err)
			}
			if !strings.Contains(err.Error(), tt.wantWords) {
				t.Fatalf("message %q does not say %q", err, tt.wantWords)
			}
			// Nothing was written beside the tree.
			siblings, _ := os.ReadDir(parent)
			if len(siblings) != 1 {
				t.Fatalf("unpack wrote outside its directory: %v", siblings)
			}
		})
	}
}

func TestUnpackStopsWhenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := source.Unpack(ctx, bytes.NewReader(archive(t, file("a", "x"))), t.TempDir(), source.Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

// TestUnpackNeverLeavesTwoDifferentFilesLookingAlike: the build context's
// differ takes a file of the same path, size and modification time as the
// one it holds to be unchanged. Whatever the archives' times, two trees
// hold a file alike in all three only when its bytes are the same.
func TestUnpackNeverLeavesTwoDifferentFilesLookingAlike(t *testing.T) {
	unpack := func(prev string, entries ...entry) string {
		t.Helper()
		dst := filepath.Join(t.TempDir(), "src")
		if _, err := source.Unpack(context.Background(), bytes.NewReader(archive(t, github(entries...)...)), dst,
			source.Options{Limits: source.DefaultLimits(), StripTopLevel: true, Previous: prev}); err != nil {
			t.Fatal(err)
		}
		return dst
	}
	stat := func(dir, name string) os.FileInfo {
		t.Helper()
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	// Every archive below carries the same time, as two commits made in
	// the same second do.
	first := unpack("", file("message.txt", "commit one"), file("app", "unchanged"))
	second := unpack(first, file("message.txt", "commit two"), file("app", "unchanged"))
	other := unpack("", file("message.txt", "commit six"), file("app", "unchanged"))

	for _, dir := range []string{second, other} {
		a, b := stat(first, "message.txt"), stat(dir, "message.txt")
		if a.Size() == b.Size() && a.ModTime().Equal(b.ModTime()) {
			t.Errorf("%s and %s hold different message.txt with the same size and time %v", first, dir, a.ModTime())
		}
	}
	if a, b := stat(first, "app"), stat(second, "app"); !a.ModTime().Equal(b.ModTime()) {
		t.Errorf("an unchanged file got a new time (%v, was %v): the differ would send it again", b.ModTime(), a.ModTime())
	}
	if got, _ := os.ReadFile(filepath.Join(second, "message.txt")); string(got) != "commit two" {
		t.Errorf("second tree's message.txt = %q", got)
	}
}
