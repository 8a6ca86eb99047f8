// Package contract is the behaviour every Provider must show, written once
// and run against each cloud's fake API and against the local provider:
// the whole lifecycle, idempotent creates, and each kind of failure told
// apart. It is for tests only.
package contract

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/provisioner"
)

// Failure is a way the fake cloud can refuse a request, answered the way
// the real cloud answers it.
type Failure int

const (
	// RateLimit refuses the next requests of any kind as too many.
	RateLimit Failure = iota
	// Quota refuses the next machine creates: the account is at its limit.
	Quota
	// Capacity refuses the next machine creates: no room in the region.
	Capacity
	// Invalid refuses the next machine creates: no such size or image.
	Invalid
)

// FakeMachine is a machine as the fake cloud holds it.
type FakeMachine struct {
	ID                  string
	Size, Region, Image string
	// UserData is as the machine would see it (decoded from base64 where
	// the API carries it so).
	UserData string
}

// Cloud is a test's hold on a fake cloud.
type Cloud interface {
	// Live returns the machines that exist and are not being deleted.
	Live() []FakeMachine
	// SetBoot sets how many state reads a new machine answers before it
	// runs; a negative number means it never runs.
	SetBoot(reads int)
	// Fail makes the next n requests that f applies to fail.
	Fail(f Failure, n int)
	// SeedForeign adds a machine that is not Stagely's, or belongs to
	// another Stagely namespace, which List must not return.
	SeedForeign()
}

// Harness wires one provider to its fake.
type Harness struct {
	Cloud Cloud
	// New returns a provider talking to Cloud, with credentials the cloud
	// accepts or with ones it rejects. Each call is a fresh client, as after
	// a restart of Stagely.
	New func(t *testing.T, goodCredentials bool) provisioner.Provider
	// Spec returns a spec the fake accepts for the environment's attempt.
	Spec func(environmentID, attempt int64) provisioner.Spec
	// UnknownID is a well-formed machine ID the cloud has never heard of.
	UnknownID string
}

// fast is short enough for tests, long enough for loopback.
var fast = provisioner.Wait{Timeout: 10 * time.Second, Interval: 5 * time.Millisecond}

// Run runs every behaviour, each against a fresh fake from newHarness.
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	ctx := t.Context()

	t.Run("a machine is created, runs, and is destroyed", func(t *testing.T) {
		h := newHarness(t)
		p := h.New(t, true)
		h.Cloud.SetBoot(2)
		spec := h.Spec(7, 1)
		m, err := provisioner.Launch(ctx, p, spec, fast)
		if err != nil {
			t.Fatalf("Launch: %v", err)
		}
		if m.State != provisioner.StateRunning || m.EnvironmentID != 7 || m.Key != spec.Key || m.ID == "" {
			t.Fatalf("Launch = %+v", m)
		}
		live := h.Cloud.Live()
		if len(live) != 1 {
			t.Fatalf("cloud holds %d machines, want 1", len(live))
		}
		got := live[0]
		if got.ID != m.ID || got.UserData != spec.UserData {
			t.Errorf("cloud holds %+v, want ID %s and the spec's user data", got, m.ID)
		}
		if spec.Size != "" && got.Size != spec.Size || spec.Region != "" && got.Region != spec.Region || spec.Image != "" && got.Image != spec.Image {
			t.Errorf("cloud made size %q region %q image %q, spec asked %q %q %q", got.Size, got.Region, got.Image, spec.Size, spec.Region, spec.Image)
		}
		if s, err := p.State(ctx, m.ID); err != nil || s != provisioner.StateRunning {
			t.Errorf("State = %v, %v; want running", s, err)
		}
		list, err := p.List(ctx)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if len(list) != 1 || list[0].ID != m.ID || list[0].EnvironmentID != 7 || list[0].Key != spec.Key {
			t.Errorf("List = %+v, want the one machine with its environment and key", list)
		}
		if err := p.Destroy(ctx, m.ID); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		if live := h.Cloud.Live(); len(live) != 0 {
			t.Errorf("after Destroy the cloud holds %+v", live)
		}
		if s, err := p.State(ctx, m.ID); err != nil || !s.Gone() {
			t.Errorf("State after Destroy = %v, %v; want terminated or missing", s, err)
		}
		if err := p.Destroy(ctx, m.ID); err != nil {
			t.Errorf("second Destroy: %v", err)
		}
		if list, err := p.List(ctx); err != nil || len(list) != 0 {
			t.Errorf("List after Destroy = %+v, %v", list, err)
		}
	})

	t.Run("a retried create makes no second machine", func(t *testing.T) {
		h := newHarness(t)
		spec := h.Spec(8, 1)
		first, err := h.New(t, true).Create(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		// The same process retrying, then a restarted one (its answer lost
		// in a crash between create and record).
		for _, p := range []provisioner.Provider{h.New(t, true), h.New(t, true)} {
			again, err := p.Create(ctx, spec)
			if err != nil {
				t.Fatalf("retried Create: %v", err)
			}
			if again.ID != first.ID {
				t.Fatalf("retried Create made %s, first was %s", again.ID, first.ID)
			}
		}
		if n := len(h.Cloud.Live()); n != 1 {
			t.Fatalf("cloud holds %d machines, want 1", n)
		}
		// The next attempt is a new machine.
		next, err := h.New(t, true).Create(ctx, h.Spec(8, 2))
		if err != nil || next.ID == first.ID {
			t.Fatalf("next attempt: %+v, %v", next, err)
		}
	})

	t.Run("a rate limit is retried with backoff", func(t *testing.T) {
		h := newHarness(t)
		h.Cloud.Fail(RateLimit, 2)
		if _, err := h.New(t, true).Create(ctx, h.Spec(9, 1)); err != nil {
			t.Fatalf("Create after two rate-limited answers: %v", err)
		}
		if n := len(h.Cloud.Live()); n != 1 {
			t.Fatalf("cloud holds %d machines, want 1", n)
		}
	})

	failures := []struct {
		name      string
		failure   Failure
		want      error
		retryable bool
	}{
		{"a rate limit that persists is told as such", RateLimit, provisioner.ErrRateLimited, true},
		{"a used-up quota is told as such", Quota, provisioner.ErrQuotaExceeded, false},
		{"missing capacity is told as such", Capacity, provisioner.ErrNoCapacity, true},
		{"an unknown size or image is told as such", Invalid, provisioner.ErrInvalidSpec, false},
	}
	for _, tt := range failures {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.Cloud.Fail(tt.failure, 1000)
			_, err := h.New(t, true).Create(ctx, h.Spec(10, 1))
			checkKind(t, err, tt.want, tt.retryable)
			if n := len(h.Cloud.Live()); n != 0 {
				t.Errorf("cloud holds %d machines after a failed create", n)
			}
		})
	}

	t.Run("bad credentials are told as such", func(t *testing.T) {
		h := newHarness(t)
		p := h.New(t, false)
		_, err := p.Create(ctx, h.Spec(11, 1))
		checkKind(t, err, provisioner.ErrBadCredentials, false)
		_, err = p.List(ctx)
		checkKind(t, err, provisioner.ErrBadCredentials, false)
		if n := len(h.Cloud.Live()); n != 0 {
			t.Errorf("cloud holds %d machines", n)
		}
	})

	t.Run("a machine that never runs is destroyed", func(t *testing.T) {
		h := newHarness(t)
		h.Cloud.SetBoot(-1)
		start := time.Now()
		_, err := provisioner.Launch(ctx, h.New(t, true), h.Spec(12, 1), provisioner.Wait{Timeout: 100 * time.Millisecond, Interval: 5 * time.Millisecond})
		checkKind(t, err, provisioner.ErrNotReady, true)
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Launch took %s to give up", d)
		}
		if live := h.Cloud.Live(); len(live) != 0 {
			t.Errorf("machine leaked: %+v", live)
		}
	})

	t.Run("list returns only this Stagely's machines", func(t *testing.T) {
		h := newHarness(t)
		h.Cloud.SeedForeign()
		p := h.New(t, true)
		var want []string
		for env := int64(20); env < 23; env++ {
			m, err := p.Create(ctx, h.Spec(env, 1))
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, m.ID)
		}
		list, err := p.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range list {
			got = append(got, m.ID)
			if m.EnvironmentID < 20 || m.EnvironmentID > 22 || !strings.HasPrefix(m.Key, "env") || m.State.Gone() {
				t.Errorf("List returned %+v", m)
			}
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("List IDs = %v, want %v", got, want)
		}
	})

	t.Run("an unknown machine is missing, and destroying it succeeds", func(t *testing.T) {
		h := newHarness(t)
		p := h.New(t, true)
		if s, err := p.State(ctx, h.UnknownID); err != nil || s != provisioner.StateMissing {
			t.Errorf("State(%s) = %v, %v; want missing", h.UnknownID, s, err)
		}
		if err := p.Destroy(ctx, h.UnknownID); err != nil {
			t.Errorf("Destroy(%s): %v", h.UnknownID, err)
		}
	})

	t.Run("an invalid spec is refused before the cloud is asked", func(t *testing.T) {
		h := newHarness(t)
		spec := h.Spec(13, 1)
		spec.Key = "Not A Key"
		_, err := h.New(t, true).Create(ctx, spec)
		checkKind(t, err, provisioner.ErrInvalidSpec, false)
	})
}

func checkKind(t *testing.T, err, want error, retryable bool) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
	if got := provisioner.Retryable(err); got != retryable {
		t.Errorf("Retryable(%v) = %v, want %v", err, got, retryable)
	}
	if provisioner.Hint(err) == "" {
		t.Errorf("no hint for %v", err)
	}
	t.Logf("message: %v", err)
}
