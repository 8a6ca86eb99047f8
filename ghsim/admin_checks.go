package ghsim

import (
	"context"
	"fmt"
	"time"
)

// ClickCheckRunAction presses a check run's button as user and sends
// check_run.requested_action. The identifier must be one of the run's
// actions: GitHub only shows the buttons the App defined, and only on a
// completed run (GitHub's REST API description of the check run's
// "actions": "The button created in this object is displayed after the
// check run completes").
func (s *Sim) ClickCheckRunAction(ctx context.Context, owner, repoName string, checkRunID int64, identifier, user string) (Result, error) {
	return s.mutate(ctx, func(now time.Time) (Result, *pendingHook, error) {
		r, cr, err := s.checkRunNamed(owner, repoName, checkRunID)
		if err != nil {
			return Result{}, nil, err
		}
		if cr.status != "completed" {
			return Result{}, nil, fmt.Errorf("ghsim: check run %d is %s: GitHub shows its buttons only once it completes", checkRunID, cr.status)
		}
		found := false
		for _, a := range cr.actions {
			found = found || a.Identifier == identifier
		}
		if !found {
			return Result{}, nil, fmt.Errorf("ghsim: check run %d has no action %q", checkRunID, identifier)
		}
		h := s.checkRunHook("requested_action", r, cr, s.st.accountFor(user, ""))
		h.overlay["requested_action"] = obj{"identifier": identifier}
		return Result{ID: cr.id}, h, nil
	})
}

// RerequestCheckRun presses "Re-run" on a check run as user and sends
// check_run.rerequested.
func (s *Sim) RerequestCheckRun(ctx context.Context, owner, repoName string, checkRunID int64, user string) (Result, error) {
	return s.mutate(ctx, func(now time.Time) (Result, *pendingHook, error) {
		r, cr, err := s.checkRunNamed(owner, repoName, checkRunID)
		if err != nil {
			return Result{}, nil, err
		}
		return Result{ID: cr.id}, s.checkRunHook("rerequested", r, cr, s.st.accountFor(user, "")), nil
	})
}

func (s *Sim) checkRunNamed(owner, repoName string, id int64) (*repo, *checkRun, error) {
	r, err := s.repoNamed(owner, repoName)
	if err != nil {
		return nil, nil, err
	}
	cr := r.findCheckRun(id)
	if cr == nil {
		return nil, nil, fmt.Errorf("ghsim: no check run %d in %s", id, r.fullName())
	}
	return r, cr, nil
}
