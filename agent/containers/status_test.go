package containers

import "testing"

func TestPickIPPrefersTheProjectsDefaultNetwork(t *testing.T) {
	tests := []struct {
		name     string
		networks map[string]string
		want     string
	}{
		{"default network", map[string]string{"p_front": "10.0.0.2", "p_default": "10.0.1.2", "bridge": "172.17.0.2"}, "10.0.1.2"},
		{"first project network by name", map[string]string{"p_front": "10.0.0.2", "p_back": "10.0.2.2", "bridge": "172.17.0.2"}, "10.0.2.2"},
		{"any network as a last resort", map[string]string{"bridge": "172.17.0.2"}, "172.17.0.2"},
		{"no network", map[string]string{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pickIP("p", tt.networks); got != tt.want {
				t.Fatalf("pickIP = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestAddressInSkipsStoppedContainers(t *testing.T) {
	cs := []Container{
		{Name: "p-web-1", Service: "web", State: "exited", Networks: map[string]string{"p_default": "10.0.0.9"}},
		{Name: "p-web-2", Service: "web", State: "running", Networks: map[string]string{"p_default": "10.0.0.3"}},
	}
	got, err := AddressIn(cs, "p", "web", 8080)
	if err != nil || got != "10.0.0.3:8080" {
		t.Fatalf("AddressIn = %q, %v", got, err)
	}
	if _, err := AddressIn(cs, "p", "api", 80); err == nil {
		t.Fatal("found an address for a service with no container")
	}
}

func TestLeftoversSayWhatIsLeft(t *testing.T) {
	if s := (Leftovers{}).String(); s != "nothing" {
		t.Fatalf("empty leftovers say %q", s)
	}
	l := Leftovers{Volumes: []string{"p_data"}, Images: []string{"p-web:latest"}}
	if l.Empty() || l.String() != "1 volumes (p_data), 1 images (p-web:latest)" {
		t.Fatalf("leftovers say %q", l.String())
	}
}
