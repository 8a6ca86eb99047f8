package compose

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"gopkg.in/yaml.v3"
)

// Project is a repository's compose files, loaded.
type Project struct {
	// Name is the compose project name the agent runs it under.
	Name string
	// Root is the repository's directory; host paths must stay inside it.
	Root string
	// Files are the compose files, absolute, in -f order.
	Files []string
	// DotEnv is the project directory's .env file, if there is one:
	// Compose reads it only when no --env-file is given, so the agent
	// passes it explicitly before its own.
	DotEnv string
	// Model is the merged model, every profile included.
	Model *types.Project

	raw []rawFile
}

type rawFile struct {
	name string // as the repository names it
	doc  *yaml.Node
}

// Load reads the compose files (relative to root, in -f order) the way
// `docker compose` will: interpolating with the project's .env, then vars,
// then the variables the default CLI runs compose with; resolving extends
// and include, merging. Paths stay unresolved against the host only in the
// sense that nothing outside root is read: env_file and label_file
// contents are not loaded.
func Load(ctx context.Context, name, root string, files []string, vars map[string]string) (*Project, error) {
	if len(files) == 0 {
		files = []string{"compose.yaml"}
	}
	p := &Project{Name: name, Root: root}
	for _, f := range files {
		if filepath.IsAbs(f) || !filepath.IsLocal(f) {
			return nil, fmt.Errorf("compose file %q: must be a path inside the repository", f)
		}
		abs := filepath.Join(root, f)
		b, err := os.ReadFile(abs)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("compose file %s: not found in the repository", f)
		}
		if err != nil {
			return nil, fmt.Errorf("compose file %s: %w", f, err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(b, &doc); err != nil {
			return nil, fmt.Errorf("compose file %s: %w", f, err)
		}
		p.Files = append(p.Files, abs)
		p.raw = append(p.raw, rawFile{name: f, doc: &doc})
	}

	projectDir := filepath.Dir(p.Files[0])
	env := map[string]string{}
	if dot := filepath.Join(projectDir, ".env"); isFile(dot) {
		p.DotEnv = dot
		parsed, err := dotenv.GetEnvFromFile(map[string]string{}, []string{dot})
		if err != nil {
			rel, _ := filepath.Rel(root, dot)
			return nil, fmt.Errorf("env file %s: %w", rel, err)
		}
		for k, v := range parsed {
			env[k] = v
		}
	}
	for k, v := range vars {
		env[k] = v
	}
	// Compose takes its own environment's variables before the env files'
	// (see CLI.Env): without them the file checked is not the one run.
	for _, kv := range dockerEnv() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}

	if err := checkIncludes(root, projectDir, p.Files); err != nil {
		return nil, err
	}

	details := types.ConfigDetails{WorkingDir: projectDir, Environment: env}
	for _, f := range p.Files {
		details.ConfigFiles = append(details.ConfigFiles, types.ConfigFile{Filename: f})
	}
	model, err := loader.LoadWithContext(ctx, details, func(o *loader.Options) {
		o.SetProjectName(name, true)
		o.SkipResolveEnvironment = true
		o.SkipResolveLabels = true
		o.Profiles = []string{"*"}
		o.ResourceLoaders = []loader.ResourceLoader{confined{root: root}}
	})
	if err != nil {
		return nil, fmt.Errorf("load compose files %s: %w", strings.Join(files, ", "), err)
	}
	p.Model = model
	return p, nil
}

func isFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

// confined refuses included or extended files that may lie outside the
// repository. compose-go gives it a relative path without the directory it
// resolves it against, so a path that climbs ("../x") is refused too; the
// others are left to compose-go's own loader.
type confined struct{ root string }

func (c confined) Accept(p string) bool { return !inRepo(c.root, p) }

func (c confined) Load(_ context.Context, p string) (string, error) {
	return "", fmt.Errorf("%s may lead outside the repository: name a file inside it, without \"..\"", p)
}

// inRepo reports whether the path p, as a compose file gives it, stays in
// root whichever directory of root it is resolved against.
func inRepo(root, p string) bool {
	if filepath.IsAbs(p) {
		return within(root, p)
	}
	return filepath.IsLocal(p)
}

func (c confined) Dir(p string) string { return filepath.Dir(p) }

// within reports whether p is root or below it; both are absolute.
func within(root, p string) bool {
	rel, err := filepath.Rel(root, filepath.Clean(p))
	return err == nil && filepath.IsLocal(rel) || rel == "."
}

// TreeMounts lists the services that bind-mount a path inside the
// repository, sorted.
func (p *Project) TreeMounts() []string {
	var out []string
	for name, s := range p.Model.Services {
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind && within(p.Root, v.Source) {
				out = append(out, name)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// locate finds which file (the last in -f order) sets the key path, and
// on which line. It returns the first file and line 0 when none does, as
// when the key came through extends or include.
func (p *Project) locate(keys ...string) (string, int) {
	for i := len(p.raw) - 1; i >= 0; i-- {
		if line := lookup(p.raw[i].doc, keys); line > 0 {
			return p.raw[i].name, line
		}
	}
	if len(p.raw) == 0 {
		return "", 0
	}
	return p.raw[0].name, 0
}

func lookup(n *yaml.Node, keys []string) int {
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	for _, k := range keys {
		if n.Kind != yaml.MappingNode {
			return 0
		}
		found := false
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == k {
				line = n.Content[i].Line
				n = n.Content[i+1]
				found = true
				break
			}
		}
		if !found {
			return 0
		}
	}
	return line
}
