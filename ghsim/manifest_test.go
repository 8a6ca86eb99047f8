package ghsim

import (
	"encoding/json"
	"maps"
	"os"
	"slices"
	"testing"
)

// TestTheSimulatedAppIsTheManifestsApp: the App the simulator plays has
// the permissions and events of github-app.json, the manifest operators
// register Stagely with, so the tests run Stagely as it is registered.
func TestTheSimulatedAppIsTheManifestsApp(t *testing.T) {
	b, err := os.ReadFile("../github-app.json")
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		DefaultPermissions map[string]string `json:"default_permissions"`
		DefaultEvents      []string          `json:"default_events"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("github-app.json: %v", err)
	}
	perms := map[string]string{}
	for k, v := range appPermissions() {
		perms[k], _ = v.(string)
	}
	if !maps.Equal(perms, m.DefaultPermissions) {
		t.Errorf("the simulated App has permissions %v; github-app.json asks for %v", perms, m.DefaultPermissions)
	}
	if got, want := slices.Sorted(slices.Values(appEvents())), slices.Sorted(slices.Values(m.DefaultEvents)); !slices.Equal(got, want) {
		t.Errorf("the simulated App subscribes to %v; github-app.json to %v", got, want)
	}
}
