package compose

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// An include entry's env_file and project_directory are read by compose-go
// itself, not through a resource loader, so confined never sees them. In a
// file that is itself included, compose-go resolves them against the
// working directory of the process: the agent's is not compose's (the
// repository), and the file checked would not be the file run.

// include is one entry of a compose file's top-level include list.
type include struct {
	paths, envFiles []string
	dir             string // project_directory
}

// checkIncludes follows the include entries of files (compose files whose
// relative paths resolve against projectDir) and of the files they
// include, and refuses an env_file or project_directory that may lead out
// of root, or that an included file sets. Every path must be written out:
// a variable would hide where it leads.
func checkIncludes(root, projectDir string, files []string) error {
	type file struct {
		path, base string
		nested     bool
	}
	var todo []file
	for _, f := range files {
		todo = append(todo, file{path: f, base: projectDir})
	}
	seen := map[string]bool{}
	for len(todo) > 0 {
		f := todo[0]
		todo = todo[1:]
		if seen[f.path] {
			continue
		}
		seen[f.path] = true
		rel, _ := filepath.Rel(root, f.path)
		entries, err := includes(f.path)
		if err != nil {
			return fmt.Errorf("compose file %s: %w", rel, err)
		}
		for _, e := range entries {
			if err := e.check(root, f.nested); err != nil {
				return fmt.Errorf("compose file %s: include: %w", rel, err)
			}
			// The included files' own relative paths resolve against
			// their project directory.
			base := filepath.Dir(join(f.base, e.paths[0]))
			if e.dir != "" {
				base = join(f.base, e.dir)
			}
			for _, p := range e.paths {
				todo = append(todo, file{path: join(f.base, p), base: base, nested: true})
			}
		}
	}
	return nil
}

func (e include) check(root string, nested bool) error {
	for _, p := range e.paths {
		if err := literal(root, "path", p); err != nil {
			return err
		}
	}
	sets := append(append([]string{}, e.envFiles...), e.dir)
	for _, v := range sets {
		if v == "" {
			continue
		}
		if nested {
			return fmt.Errorf("%q: env_file and project_directory are not allowed in an included file", v)
		}
		if err := literal(root, "env_file or project_directory", v); err != nil {
			return err
		}
	}
	return nil
}

// literal refuses a path with a variable, or one that may lead out of root.
func literal(root, key, p string) error {
	if strings.Contains(p, "$") {
		return fmt.Errorf("%s %q: a variable there may lead outside the repository; write the path out", key, p)
	}
	if !inRepo(root, p) {
		return fmt.Errorf("%s %q may lead outside the repository: name a path inside it, without \"..\"", key, p)
	}
	return nil
}

// includes reads the include entries of a compose file. A file that is
// missing is left for compose-go to report.
func includes(path string) ([]include, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var doc struct {
		Include []any `yaml:"include"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("include: %w", err)
	}
	var out []include
	for _, it := range doc.Include {
		var e include
		switch v := it.(type) {
		case string:
			e.paths = []string{v}
		case map[string]any:
			e.paths, e.envFiles = strs(v["path"]), strs(v["env_file"])
			e.dir, _ = v["project_directory"].(string)
		}
		if len(e.paths) == 0 {
			return nil, fmt.Errorf("include: an entry names no file")
		}
		out = append(out, e)
	}
	return out, nil
}

// strs reads a string or a list of strings.
func strs(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, it := range v {
			if s, ok := it.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

func join(base, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(base, p)
}
