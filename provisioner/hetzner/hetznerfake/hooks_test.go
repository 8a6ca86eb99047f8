package hetznerfake_test

import (
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/stagely-dev/stagely/provisioner/hetzner/hetznerfake"
)

// receive returns the next value from ch, failing the test if none comes
// in good time.
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s", what)
		panic("unreachable")
	}
}

func TestHooksSeeBootAndDeleteWithoutHoldingUpTheAPI(t *testing.T) {
	c := hetznerfake.New(t)
	booted, deleted := make(chan hetznerfake.Server, 2), make(chan hetznerfake.Server, 2)
	release := make(chan struct{})
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock) // runs before the fake waits for its hooks
	c.OnBoot(func(s hetznerfake.Server) {
		booted <- s
		<-release // a boot hook that blocks, as one starting a machine may
	})
	c.OnDelete(func(s hetznerfake.Server) { deleted <- s })
	c.SetBoot(1)

	ctx := t.Context()
	api := hcloud.NewClient(hcloud.WithToken(c.Token()), hcloud.WithEndpoint(c.URL()))
	fw, _, err := api.Firewall.Create(ctx, hcloud.FirewallCreateOpts{Name: "closed"})
	if err != nil {
		t.Fatalf("create firewall: %v", err)
	}
	labels := map[string]string{"stagely": "stagely", "stagely-key": "env5-1"}
	userData := "#!/bin/sh\necho booted\n"
	res, _, err := api.Server.Create(ctx, hcloud.ServerCreateOpts{
		Name:       "stagely-env5-1",
		ServerType: &hcloud.ServerType{Name: "cx22"},
		Image:      &hcloud.Image{Name: "ubuntu-24.04"},
		Location:   &hcloud.Location{Name: "fsn1"},
		UserData:   userData,
		Labels:     labels,
		Firewalls:  []*hcloud.ServerCreateFirewall{{Firewall: hcloud.Firewall{ID: fw.Firewall.ID}}},
	})
	if err != nil {
		t.Fatalf("create server: %v", err)
	}
	id := res.Server.ID

	status := func() hcloud.ServerStatus {
		t.Helper()
		s, _, err := api.Server.GetByID(ctx, id)
		if err != nil || s == nil {
			t.Fatalf("get server %d: %v, %v", id, s, err)
		}
		return s.Status
	}
	if got := status(); got != hcloud.ServerStatusInitializing {
		t.Fatalf("first read: status %s, want initializing", got)
	}
	if got := status(); got != hcloud.ServerStatusRunning {
		t.Fatalf("second read: status %s, want running", got)
	}
	s := receive(t, booted, "boot")
	if s.ID != id || s.Name != "stagely-env5-1" || s.UserData != userData || s.Status != "running" || !maps.Equal(s.Labels, labels) || len(s.Firewalls) != 1 {
		t.Errorf("OnBoot got %+v", s)
	}

	// The boot hook is still blocked; the API answers regardless, and a
	// running server does not boot again.
	if got := status(); got != hcloud.ServerStatusRunning {
		t.Fatalf("third read: status %s, want running", got)
	}
	if _, _, err := api.Server.DeleteWithResult(ctx, &hcloud.Server{ID: id}); err != nil {
		t.Fatalf("delete server: %v", err)
	}
	if _, ok := c.Server(id); ok {
		t.Error("the fake still holds the deleted server")
	}
	select {
	case <-deleted:
		t.Fatal("OnDelete ran before the server's OnBoot returned")
	case <-time.After(20 * time.Millisecond):
	}
	unblock()
	if s := receive(t, deleted, "delete"); s.ID != id || s.UserData != userData {
		t.Errorf("OnDelete got %+v", s)
	}
	select {
	case s := <-booted:
		t.Errorf("booted again: %+v", s)
	default:
	}
}

func TestServersAndFirewallsAreReadAsCopies(t *testing.T) {
	c := hetznerfake.New(t)
	fw := c.AddFirewall(hetznerfake.Firewall{Name: "open"})
	s := c.AddServer(hetznerfake.Server{Name: "foreign", Labels: map[string]string{"owner": "else"}, Firewalls: []int64{fw.ID}})
	if s.ID == 0 || s.Status != "running" {
		t.Fatalf("AddServer = %+v", s)
	}
	s.Labels["owner"] = "changed"
	got, ok := c.Server(s.ID)
	if !ok || got.Labels["owner"] != "else" {
		t.Fatalf("Server(%d) = %+v, %v; want labels unchanged by the caller", s.ID, got, ok)
	}
	if err := c.SetLabels(s.ID, map[string]string{"owner": "me"}); err != nil {
		t.Fatal(err)
	}
	if all := c.Servers(); len(all) != 1 || all[0].Labels["owner"] != "me" {
		t.Errorf("Servers = %+v", all)
	}
	if err := c.SetLabels(424242, nil); err == nil {
		t.Error("SetLabels of an unknown server succeeded")
	}
	if got, ok := c.Firewall(got.Firewalls[0]); !ok || got.Name != "open" {
		t.Errorf("Firewall = %+v, %v", got, ok)
	}
	if all := c.Firewalls(); len(all) != 1 {
		t.Errorf("Firewalls = %+v", all)
	}
}
