package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"testing"
)

// TestSelfHostComposeFileIsValid checks compose.yaml, the self-hosting
// entry point, with docker compose's own parser (nothing is pulled), and
// that the server's data directory, which holds the tunnel's CA that every
// machine trusts, outlives the container.
func TestSelfHostComposeFileIsValid(t *testing.T) {
	cmd := exec.Command("docker", "compose", "-f", "../../compose.yaml", "config", "--format", "json")
	cmd.Env = append(os.Environ(), "STAGELY_WEBHOOK_SECRET=0123456789abcdef", "STAGELY_APP_ID=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("docker compose config: %v\n%s", err, out)
	}
	var cfg struct {
		Services map[string]struct {
			Environment map[string]*string
			Volumes     []struct{ Type, Source, Target string }
		}
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	s, ok := cfg.Services["stagely"]
	if !ok {
		t.Fatal("compose.yaml has no stagely service")
	}
	dir := s.Environment["STAGELY_DATA_DIR"]
	if dir == nil {
		t.Fatal("compose.yaml leaves STAGELY_DATA_DIR to its default, inside the container")
	}
	for _, v := range s.Volumes {
		if v.Type == "volume" && v.Target == *dir {
			return
		}
	}
	t.Errorf("STAGELY_DATA_DIR %s is on no named volume (%+v): a new container would make a new tunnel CA", *dir, s.Volumes)
}
