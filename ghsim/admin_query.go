package ghsim

import (
	"fmt"
	"time"
)

// CheckRun is a check run as the admin API shows it.
type CheckRun struct {
	ID          int64            `json:"id"`
	Name        string           `json:"name"`
	HeadSHA     string           `json:"head_sha"`
	Status      string           `json:"status"`
	Conclusion  string           `json:"conclusion,omitempty"`
	ExternalID  string           `json:"external_id,omitempty"`
	DetailsURL  string           `json:"details_url,omitempty"`
	StartedAt   time.Time        `json:"started_at"`
	CompletedAt time.Time        `json:"completed_at,omitzero"`
	Title       string           `json:"title,omitempty"`
	Summary     string           `json:"summary,omitempty"`
	Text        string           `json:"text,omitempty"`
	Actions     []CheckRunAction `json:"actions,omitempty"`
	AppID       int64            `json:"app_id"`
}

// Comment is an issue comment as the admin API shows it.
type Comment struct {
	ID        int64     `json:"id"`
	User      string    `json:"user"`
	UserType  string    `json:"user_type"` // User or Bot
	Body      string    `json:"body"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Reaction is a reaction to a comment as the admin API shows it.
type Reaction struct {
	ID        int64     `json:"id"`
	User      string    `json:"user"`
	Content   string    `json:"content"`
	CreatedAt time.Time `json:"created_at"`
}

// CheckRuns lists a repository's check runs, oldest first, optionally only
// those on head sha.
func (s *Sim) CheckRuns(owner, repoName, sha string) ([]CheckRun, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.repoNamed(owner, repoName)
	if err != nil {
		return nil, err
	}
	out := []CheckRun{}
	for _, cr := range r.checkRuns {
		if sha != "" && cr.headSHA != sha {
			continue
		}
		out = append(out, CheckRun{
			ID: cr.id, Name: cr.name, HeadSHA: cr.headSHA, Status: cr.status, Conclusion: cr.conclusion,
			ExternalID: deref(cr.externalID), DetailsURL: deref(cr.detailsURL),
			StartedAt: cr.startedAt, CompletedAt: cr.completedAt,
			Title: deref(cr.output.title), Summary: deref(cr.output.summary), Text: deref(cr.output.text),
			Actions: append([]CheckRunAction(nil), cr.actions...), AppID: s.cfg.AppID,
		})
	}
	return out, nil
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// Comments lists a pull request's comments, oldest first.
func (s *Sim) Comments(owner, repoName string, number int) ([]Comment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, _, err := s.pullNamed(owner, repoName, number)
	if err != nil {
		return nil, err
	}
	out := []Comment{}
	for _, c := range r.comments {
		if c.issueNumber == number {
			out = append(out, Comment{ID: c.id, User: c.user.login, UserType: c.user.typ, Body: c.body,
				CreatedAt: c.createdAt, UpdatedAt: c.updatedAt})
		}
	}
	return out, nil
}

// Reactions lists the reactions to a comment, oldest first.
func (s *Sim) Reactions(owner, repoName string, commentID int64) ([]Reaction, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.repoNamed(owner, repoName)
	if err != nil {
		return nil, err
	}
	c := r.findComment(commentID)
	if c == nil {
		return nil, fmt.Errorf("ghsim: no comment %d in %s", commentID, r.fullName())
	}
	out := []Reaction{}
	for _, rc := range c.reactions {
		out = append(out, Reaction{ID: rc.id, User: rc.user.login, Content: rc.content, CreatedAt: rc.createdAt})
	}
	return out, nil
}
