package main

import (
	"os"
	"os/exec"
	"testing"
)

// TestSelfHostComposeFileIsValid checks compose.yaml, the self-hosting
// entry point, with docker compose's own parser (nothing is pulled).
func TestSelfHostComposeFileIsValid(t *testing.T) {
	cmd := exec.Command("docker", "compose", "-f", "../../compose.yaml", "config", "-q")
	cmd.Env = append(os.Environ(), "STAGELY_WEBHOOK_SECRET=0123456789abcdef", "STAGELY_APP_ID=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker compose config: %v\n%s", err, out)
	}
}
