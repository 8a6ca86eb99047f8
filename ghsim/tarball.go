package ghsim

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"net/http"
	"path"
	"sort"
	"strings"
	"sync"
)

// codeloadPrefix is where tarball downloads are served, standing in for
// GitHub's separate codeload host.
const codeloadPrefix = "/_codeload/"

// serveCodeload answers GET /_codeload/{owner}/{repo}/legacy.tar.gz/{sha}?token=
// with the tree at sha, packed as GitHub does: a pax global header carrying
// the commit sha, then everything under "owner-repo-shortsha/".
func (s *Sim) serveCodeload(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.NotFound(w, r)
		return
	}
	s.mu.Lock()
	link := s.st.archives[r.URL.Query().Get("token")]
	now := s.now()
	var name string
	var cm *commit
	valid := link != nil && now.Before(link.expiresAt) &&
		strings.HasPrefix(r.URL.Path, codeloadPrefix+link.repo.fullName()+"/legacy.tar.gz/"+link.sha)
	if valid {
		cm = link.repo.commits[link.sha]
		name = fmt.Sprintf("%s-%s-%s", link.repo.owner.login, link.repo.name, link.sha[:7])
	}
	s.mu.Unlock()

	if !valid {
		// GitHub's codeload answers expired or forged links with a bare 404.
		http.NotFound(w, r)
		return
	}
	// A commit never changes once made: it is packed without the lock, so
	// a large tree does not hold up every other call to the simulator.
	data, err := s.packed.get(name+"@"+cm.sha, func() ([]byte, error) { return buildTarball(name, cm) })
	if err != nil {
		http.Error(w, "ghsim: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/x-gzip")
	w.Header().Set("Content-Disposition", "attachment; filename="+name+".tar.gz")
	w.Header().Set("Content-Length", fmt.Sprint(len(data)))
	_, _ = w.Write(data)
}

// tarballCache holds the most recently built archives, by name and sha.
type tarballCache struct {
	mu    sync.Mutex
	data  map[string][]byte
	order []string
}

const tarballCacheSize = 16

func (c *tarballCache) get(key string, build func() ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	b, ok := c.data[key]
	c.mu.Unlock()
	if ok {
		return b, nil
	}
	b, err := build()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.data == nil {
		c.data = map[string][]byte{}
	}
	if _, ok := c.data[key]; !ok {
		c.data[key] = b
		c.order = append(c.order, key)
		if len(c.order) > tarballCacheSize {
			delete(c.data, c.order[0])
			c.order = c.order[1:]
		}
	}
	return b, nil
}

func buildTarball(top string, cm *commit) ([]byte, error) {
	var buf bytes.Buffer
	// Fastest compression: the simulator serves the same archives over
	// and over in tests, and the level is invisible to a client.
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{
		Typeflag:   tar.TypeXGlobalHeader,
		Name:       "pax_global_header",
		PAXRecords: map[string]string{"comment": cm.sha},
	}); err != nil {
		return nil, fmt.Errorf("tarball: %w", err)
	}
	dirs := map[string]bool{top + "/": true}
	paths := make([]string, 0, len(cm.tree))
	for p := range cm.tree {
		paths = append(paths, p)
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			dirs[top+"/"+d+"/"] = true
		}
	}
	entries := make([]string, 0, len(dirs)+len(paths))
	for d := range dirs {
		entries = append(entries, d)
	}
	for _, p := range paths {
		entries = append(entries, top+"/"+p)
	}
	sort.Strings(entries)
	for _, e := range entries {
		hdr := &tar.Header{Name: e, ModTime: cm.time, Format: tar.FormatPAX}
		if strings.HasSuffix(e, "/") {
			hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o775
		} else {
			content := cm.tree[strings.TrimPrefix(e, top+"/")]
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, fileMode(content), int64(len(content))
			if err := tw.WriteHeader(hdr); err != nil {
				return nil, fmt.Errorf("tarball: %w", err)
			}
			if _, err := tw.Write([]byte(content)); err != nil {
				return nil, fmt.Errorf("tarball: %w", err)
			}
			continue
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("tarball: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("tarball: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("tarball: %w", err)
	}
	return buf.Bytes(), nil
}

// fileMode stands in for git's executable bit, which the simulated trees
// do not record: programs (ELF binaries and scripts) are executable, as
// they would be in a real repository.
func fileMode(content string) int64 {
	if strings.HasPrefix(content, "\x7fELF") || strings.HasPrefix(content, "#!") {
		return 0o775
	}
	return 0o664
}
