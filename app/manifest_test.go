package app

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
)

// appManifest is the part of github-app.json, the GitHub App manifest
// operators register Stagely with, that the code depends on.
type appManifest struct {
	HookAttributes struct {
		URL string `json:"url"`
	} `json:"hook_attributes"`
	DefaultPermissions map[string]string `json:"default_permissions"`
	DefaultEvents      []string          `json:"default_events"`
}

// TestTheAppManifestSubscribesToWhatTheIntakeHandles: an App registered
// from the manifest is sent every event Stagely acts on, and no other
// (GitHub sends installation events to every App without a subscription;
// it refuses to subscribe to them).
func TestTheAppManifestSubscribesToWhatTheIntakeHandles(t *testing.T) {
	b, err := os.ReadFile("../github-app.json")
	if err != nil {
		t.Fatal(err)
	}
	var m appManifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("github-app.json: %v", err)
	}
	var handled []string
	for _, h := range Handlers(nil) {
		for _, e := range h.Handles() {
			if e != "installation" && e != "installation_repositories" {
				handled = append(handled, e)
			}
		}
	}
	slices.Sort(handled)
	events := slices.Sorted(slices.Values(m.DefaultEvents))
	if !slices.Equal(events, handled) {
		t.Errorf("github-app.json subscribes to %v; the intake handles %v", events, handled)
	}
	if !strings.HasSuffix(m.HookAttributes.URL, HookPath) {
		t.Errorf("github-app.json's webhook URL %q does not end in the intake's path %q", m.HookAttributes.URL, HookPath)
	}
}
