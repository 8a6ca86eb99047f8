package provisioner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// stub is a Provider whose machine goes through the states it is given,
// one per State call, and stays in the last.
type stub struct {
	mu         sync.Mutex
	states     []State
	stateErrs  []error
	created    int
	destroyed  []string
	destroyErr error
}

func (s *stub) Create(ctx context.Context, spec Spec) (Machine, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.created++
	return Machine{ID: "m-1", EnvironmentID: spec.EnvironmentID, Key: spec.Key, State: StatePending}, nil
}

func (s *stub) State(ctx context.Context, id string) (State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.stateErrs) > 0 {
		err := s.stateErrs[0]
		s.stateErrs = s.stateErrs[1:]
		return "", err
	}
	st := s.states[0]
	if len(s.states) > 1 {
		s.states = s.states[1:]
	}
	return st, nil
}

func (s *stub) Destroy(ctx context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.destroyed = append(s.destroyed, id)
	return s.destroyErr
}

func (s *stub) List(ctx context.Context) ([]Machine, error) { return nil, nil }

func testSpec() Spec { return Spec{EnvironmentID: 4, Key: Key(4, 1), UserData: "#cloud-config\n"} }

var quick = Wait{Timeout: 200 * time.Millisecond, Interval: time.Millisecond}

func TestLaunch(t *testing.T) {
	rateLimited := &Error{Kind: ErrRateLimited, Code: "429"}
	tests := []struct {
		name          string
		states        []State
		stateErrs     []error
		destroyErr    error
		wantErr       error
		wantDestroyed bool
	}{
		{name: "running after pending", states: []State{StatePending, StateMissing, StateRunning}},
		{name: "a rate limit while polling is waited out", stateErrs: []error{rateLimited, rateLimited}, states: []State{StateRunning}},
		{name: "never running is destroyed", states: []State{StatePending}, wantErr: ErrNotReady, wantDestroyed: true},
		{name: "stopped while starting is destroyed", states: []State{StatePending, StateStopped}, wantErr: ErrNotReady, wantDestroyed: true},
		{name: "terminated while starting is destroyed", states: []State{StateTerminated}, wantErr: ErrNotReady, wantDestroyed: true},
		{name: "a failed destroy is reported too", states: []State{StateStopped}, destroyErr: errors.New("boom"), wantErr: ErrNotReady, wantDestroyed: true},
		{name: "bad credentials while polling end the wait", stateErrs: []error{&Error{Kind: ErrBadCredentials}}, states: []State{StateRunning}, wantErr: ErrBadCredentials},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &stub{states: tt.states, stateErrs: tt.stateErrs, destroyErr: tt.destroyErr}
			m, err := Launch(t.Context(), p, testSpec(), quick)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && m.State != StateRunning {
				t.Errorf("machine %+v", m)
			}
			if got := len(p.destroyed) > 0; got != tt.wantDestroyed {
				t.Errorf("destroyed = %v, want %v", p.destroyed, tt.wantDestroyed)
			}
			if tt.destroyErr != nil && !errors.Is(err, tt.destroyErr) {
				t.Errorf("err %v hides the destroy failure", err)
			}
		})
	}
}

func TestLaunchLeavesTheMachineWhenStagelyStops(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	p := &stub{states: []State{StatePending}}
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	_, err := Launch(ctx, p, testSpec(), Wait{Timeout: time.Minute, Interval: time.Millisecond})
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrNotReady) {
		t.Fatalf("err = %v", err)
	}
	if len(p.destroyed) != 0 {
		t.Error("Launch destroyed a machine because Stagely stopped; the next Launch would have picked it up")
	}
}

func TestErrorMessageCarriesKindAndTheCloudsWords(t *testing.T) {
	sdk := errors.New("operation error EC2: RunInstances, https response error StatusCode: 400")
	tests := []struct {
		err  *Error
		want string
	}{
		{&Error{Kind: ErrQuotaExceeded, Code: "VcpuLimitExceeded", Message: "limit of 0", Err: sdk}, ErrQuotaExceeded.Error() + " (VcpuLimitExceeded: limit of 0)"},
		{&Error{Kind: ErrNoCapacity, Message: "no room", Err: sdk}, ErrNoCapacity.Error() + " (no room)"},
		{&Error{Kind: ErrRateLimited}, ErrRateLimited.Error()},
		{&Error{Code: "Weird", Message: "odd", Err: sdk}, "Weird: odd"},
		{&Error{Err: sdk}, sdk.Error()},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
		wrapped := fmt.Errorf("create machine for environment 1 on x: %w", tt.err)
		if tt.err.Kind != nil && !errors.Is(wrapped, tt.err.Kind) {
			t.Errorf("errors.Is(%v, kind) = false", wrapped)
		}
		if tt.err.Err != nil && !errors.Is(wrapped, sdk) {
			t.Errorf("errors.Is(%v, sdk error) = false", wrapped)
		}
		var e *Error
		if !errors.As(wrapped, &e) || e != tt.err {
			t.Errorf("errors.As found %v", e)
		}
	}
}

func TestEveryKindHasAHintAndOnlyPassingOnesAreRetryable(t *testing.T) {
	retryable := map[error]bool{ErrRateLimited: true, ErrNoCapacity: true, ErrNotReady: true, ErrQuotaExceeded: false, ErrBadCredentials: false, ErrInvalidSpec: false}
	for kind, want := range retryable {
		err := fmt.Errorf("wrapped: %w", &Error{Kind: kind})
		if Hint(err) == "" {
			t.Errorf("no hint for %v", kind)
		}
		if Retryable(err) != want {
			t.Errorf("Retryable(%v) = %v, want %v", kind, !want, want)
		}
	}
	if Hint(errors.New("other")) != "" || Retryable(errors.New("other")) {
		t.Error("an unknown error got a hint or was called retryable")
	}
}

func TestSpecValidate(t *testing.T) {
	good := testSpec()
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		change func(*Spec)
		want   string
	}{
		{"no environment", func(s *Spec) { s.EnvironmentID = 0 }, "environment id"},
		{"upper-case key", func(s *Spec) { s.Key = "Env1-1" }, "idempotency key"},
		{"key too long", func(s *Spec) { s.Key = strings.Repeat("a", 43) }, "idempotency key"},
		{"no user data", func(s *Spec) { s.UserData = "" }, "user data"},
	}
	for _, tt := range tests {
		s := good
		tt.change(&s)
		err := s.Validate()
		if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v", tt.name, err)
		}
	}
}

func TestKeyFitsEveryCloudsRules(t *testing.T) {
	k := Key(9223372036854775807, 9223372036854775807)
	if !keyPattern.MatchString(k) {
		t.Errorf("Key of the largest IDs %q fails the key rules", k)
	}
	if Key(42, 3) != "env42-3" || Key(42, 3) == Key(42, 4) || Key(4, 23) == Key(42, 3) {
		t.Error("keys are not distinct per environment and attempt")
	}
}

func TestNamespace(t *testing.T) {
	if ns, err := Namespace(""); err != nil || ns != DefaultNamespace {
		t.Errorf("Namespace(\"\") = %q, %v", ns, err)
	}
	for _, bad := range []string{"Stagely", "1st", "a_b", strings.Repeat("a", 21)} {
		if _, err := Namespace(bad); err == nil {
			t.Errorf("Namespace(%q) accepted", bad)
		}
	}
}

func TestRetryBackoffGrowsWithinBounds(t *testing.T) {
	r := Retry{Attempts: 5, MinWait: 10 * time.Millisecond, MaxWait: 80 * time.Millisecond}
	for n, ceiling := range []time.Duration{10, 20, 40, 80, 80, 80} {
		ceiling *= time.Millisecond
		for range 50 {
			d := r.Backoff(n)
			if d < ceiling/2 || d > ceiling {
				t.Fatalf("Backoff(%d) = %s, want within [%s, %s]", n, d, ceiling/2, ceiling)
			}
		}
	}
	if d := (Retry{}).Backoff(100); d > 30*time.Second {
		t.Errorf("default backoff %s over 30s", d)
	}
}
