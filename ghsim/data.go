package ghsim

import (
	"bytes"
	"compress/gzip"
	"embed"
	"fmt"
	"io"
)

// githubData holds the parts of GitHub's published descriptions the simulator
// needs (see githubdata/README.md): it must work where the full reference data
// is not around, e.g. on a user's machine running `stagely ghsim`.
//
//go:embed githubdata
var githubData embed.FS

const (
	restSubsetFile    = "rest-api.subset.json.gz"
	webhookSubsetFile = "webhooks-api.subset.json.gz"
)

// readGitHubData returns an embedded file, decompressed if it is gzipped.
func readGitHubData(name string) ([]byte, error) {
	b, err := githubData.ReadFile("githubdata/" + name)
	if err != nil {
		return nil, fmt.Errorf("embedded GitHub data %s: %w", name, err)
	}
	if len(name) > 3 && name[len(name)-3:] == ".gz" {
		if b, err = gunzip(b); err != nil {
			return nil, fmt.Errorf("embedded GitHub data %s: %w", name, err)
		}
	}
	return b, nil
}

func gunzip(b []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	return io.ReadAll(zr)
}
