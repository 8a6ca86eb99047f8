package app

import "time"

// The payload types below hold only what Stagely reads from each event.
// go-github's full event types would reject some payloads GitHub really
// sends (check_run.rerequested carries timestamps like
// "2018-04-25 20:42:10"), and decoding every field of a 30 KB pull request
// payload is most of an intake's cost.

type user struct {
	Login string `json:"login"`
	Type  string `json:"type"`
}

type repository struct {
	ID       int64  `json:"id"`
	Name     string `json:"name"`
	FullName string `json:"full_name"`
	Private  bool   `json:"private"`
	Owner    user   `json:"owner"`
}

type installation struct {
	ID      int64 `json:"id"`
	AppID   int64 `json:"app_id"`
	Account user  `json:"account"`
}

type envelope struct {
	Action       string        `json:"action"`
	Installation *installation `json:"installation"`
	Repository   *repository   `json:"repository"`
	Sender       user          `json:"sender"`
}

func (e *envelope) installationID() int64 {
	if e.Installation == nil {
		return 0
	}
	return e.Installation.ID
}

type pullRequestEvent struct {
	envelope
	PullRequest *struct {
		Number    int       `json:"number"`
		UpdatedAt time.Time `json:"updated_at"`
		Head      struct {
			SHA  string      `json:"sha"`
			Repo *repository `json:"repo"` // null when the fork was deleted
		} `json:"head"`
	} `json:"pull_request"`
}

type issueCommentEvent struct {
	envelope
	Issue struct {
		Number      int       `json:"number"`
		PullRequest *struct{} `json:"pull_request"` // present only on pull requests
	} `json:"issue"`
	Comment struct {
		ID   int64  `json:"id"`
		Body string `json:"body"`
		User user   `json:"user"`
	} `json:"comment"`
}

type checkRunEvent struct {
	envelope
	CheckRun struct {
		ExternalID string `json:"external_id"`
		App        struct {
			ID int64 `json:"id"`
		} `json:"app"`
		PullRequests []struct {
			Number int `json:"number"`
		} `json:"pull_requests"`
	} `json:"check_run"`
	RequestedAction *struct {
		Identifier string `json:"identifier"`
	} `json:"requested_action"`
}

// shortRepository is the repository object of installation events.
type shortRepository struct {
	ID       int64  `json:"id"`
	Name     string `json:"name"`
	FullName string `json:"full_name"`
	Private  bool   `json:"private"`
}

type installationEvent struct {
	envelope
	Repositories []shortRepository `json:"repositories"`
}

type installationRepositoriesEvent struct {
	envelope
	RepositoriesAdded   []shortRepository `json:"repositories_added"`
	RepositoriesRemoved []shortRepository `json:"repositories_removed"`
}
