package compose

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

var varName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// WriteEnvFile writes vars as a Compose env file at path, mode 0600, in a
// directory it creates with mode 0700. Values are quoted so that Compose
// reads back exactly the bytes given: no interpolation, no escapes.
func WriteEnvFile(path string, vars map[string]string) error {
	keys := make([]string, 0, len(vars))
	for k := range vars {
		if !varName.MatchString(k) {
			return fmt.Errorf("env file: %q is not a valid variable name", k)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(quote(vars[k]))
		b.WriteByte('\n')
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("env file: %w", err)
	}
	if err := writePrivate(path, []byte(b.String())); err != nil {
		return fmt.Errorf("env file: %w", err)
	}
	return nil
}

// quote encodes a value for Compose's dotenv parser. Single quotes are
// literal there, except that a backslash escapes a quote; values that
// cannot be written that way use double quotes, where \\, \", \$ and \n
// are the escapes and nothing else is special.
func quote(v string) string {
	if !strings.Contains(v, "'") && !strings.HasSuffix(v, `\`) {
		return "'" + v + "'"
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`, "\n", `\n`, "\r", `\r`)
	return `"` + r.Replace(v) + `"`
}

// writePrivate writes data to path with mode 0600, replacing any file
// there in one rename.
func writePrivate(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// WriteOverride writes the override file at path with mode 0600.
func WriteOverride(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("override file: %w", err)
	}
	if err := writePrivate(path, data); err != nil {
		return fmt.Errorf("override file: %w", err)
	}
	return nil
}
