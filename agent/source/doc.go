// Package source unpacks a deployment's source tarball into a fresh
// directory and refuses, naming the entry, anything that could reach
// outside it: absolute paths, "..", symbolic or hard links that lead out of
// the tree, entries written through a symbolic link, device files and
// fifos, and archives over a size or entry-count limit.
//
// It is not a general tar extractor: ownership, extended attributes and
// special permission bits are dropped, since the tree only feeds a
// `docker compose build`.
package source
