package repoconfig

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/golden/*.golden from the current output")

// TestParseErrorGolden pins how a ParseError reads on a Check Run: each
// testdata/golden/NAME.yml must fail to parse with exactly NAME.golden.
func TestParseErrorGolden(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "golden", "*.yml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range files {
		name := strings.TrimSuffix(filepath.Base(in), ".yml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Parse(data)
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse error = %v, want *ParseError", err)
			}
			got := pe.Error() + "\n"
			golden := strings.TrimSuffix(in, ".yml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("ParseError.Error() for %s:\n%s\nwant (%s):\n%s", in, got, golden, want)
			}
		})
	}
}
