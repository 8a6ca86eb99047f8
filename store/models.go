package store

import (
	"encoding/json"
	"time"

	"github.com/uptrace/bun"
)

// Desired states of an environment.
const (
	DesiredRunning   = "running"
	DesiredDestroyed = "destroyed"
)

// Why the reaper asked for an environment's current generation.
const (
	// ReapedIdle: destroyed after its TTL without a push or command.
	ReapedIdle = "idle"
	// ReapedStuckRetry: no progress past the deadline; retried once.
	ReapedStuckRetry = "stuck_retry"
	// ReapedStuck: still no progress after the retry; to be reported failed.
	ReapedStuck = "stuck"
)

// Observed states of an environment, as the reconciler last left it.
const (
	ObservedNew              = "new"
	ObservedQueued           = "queued"
	ObservedDeploying        = "deploying"
	ObservedRunning          = "running"
	ObservedFailed           = "failed"
	ObservedDestroyed        = "destroyed"
	ObservedAwaitingApproval = "awaiting_approval"
	ObservedNotEnabled       = "not_enabled"
	ObservedInvalidConfig    = "invalid_config"
)

type Installation struct {
	bun.BaseModel `bun:"table:installations"`

	ID           int64      `bun:"id,pk"`
	AccountLogin string     `bun:"account_login,notnull"`
	AccountType  string     `bun:"account_type,notnull"`
	SuspendedAt  *time.Time `bun:"suspended_at"`
	DeletedAt    *time.Time `bun:"deleted_at"`
	CreatedAt    time.Time  `bun:"created_at,nullzero,notnull,default:current_timestamp"`
	UpdatedAt    time.Time  `bun:"updated_at,nullzero,notnull,default:current_timestamp"`
}

type Repository struct {
	bun.BaseModel `bun:"table:repositories"`

	ID             int64      `bun:"id,pk"`
	InstallationID int64      `bun:"installation_id,notnull"`
	Owner          string     `bun:"owner,notnull"`
	Name           string     `bun:"name,notnull"`
	IsPrivate      bool       `bun:"is_private,notnull"`
	RemovedAt      *time.Time `bun:"removed_at"`
	CreatedAt      time.Time  `bun:"created_at,nullzero,notnull,default:current_timestamp"`
	UpdatedAt      time.Time  `bun:"updated_at,nullzero,notnull,default:current_timestamp"`
}

// Environment is one pull request's preview, desired and observed.
type Environment struct {
	bun.BaseModel `bun:"table:environments"`

	ID                 int64      `bun:"id,pk,autoincrement"`
	RepositoryID       int64      `bun:"repository_id,notnull"`
	InstallationID     int64      `bun:"installation_id,notnull"`
	Owner              string     `bun:"owner,notnull"`
	Repo               string     `bun:"repo,notnull"`
	PRNumber           int        `bun:"pr_number,notnull"`
	Hash               string     `bun:"hash,notnull"`
	HeadRepo           string     `bun:"head_repo,notnull"`
	IsFork             bool       `bun:"is_fork,notnull"`
	IsForkApproved     bool       `bun:"is_fork_approved,notnull"`
	PRUpdatedAt        time.Time  `bun:"pr_updated_at,notnull"`
	DesiredState       string     `bun:"desired_state,notnull"`
	DesiredSHA         string     `bun:"desired_sha,notnull"`
	DesiredGeneration  int64      `bun:"desired_generation,notnull"`
	ObservedState      string     `bun:"observed_state,notnull"`
	ObservedSHA        string     `bun:"observed_sha,notnull"`
	ObservedGeneration int64      `bun:"observed_generation,notnull"`
	IntentSeq          int64      `bun:"intent_seq,notnull"`
	HandledSeq         int64      `bun:"handled_seq,notnull"`
	CommentID          int64      `bun:"comment_id,notnull"`
	LastError          string     `bun:"last_error,notnull"`
	Attempts           int        `bun:"attempts,notnull"`
	NextAttemptAt      time.Time  `bun:"next_attempt_at,notnull"`
	LeaseOwner         string     `bun:"lease_owner,notnull"`
	LeaseExpiresAt     *time.Time `bun:"lease_expires_at"`
	TouchedAt          time.Time  `bun:"touched_at,notnull"`
	// TTLSeconds is the effective time to live the last deploy read from
	// .stagely.yml (or the server default); 0: not known, never idle-reaped.
	TTLSeconds int64 `bun:"ttl_seconds,notnull"`
	// ReapedGeneration is the generation the reaper last asked for, and
	// ReapedReason why (Reaped*); they apply while DesiredGeneration equals
	// ReapedGeneration.
	ReapedGeneration int64     `bun:"reaped_generation,notnull"`
	ReapedReason     string    `bun:"reaped_reason,notnull"`
	CreatedAt        time.Time `bun:"created_at,nullzero,notnull,default:current_timestamp"`
	UpdatedAt        time.Time `bun:"updated_at,nullzero,notnull,default:current_timestamp"`
}

// FullName is owner/repo.
func (e *Environment) FullName() string { return e.Owner + "/" + e.Repo }

// Step is one step of a deployment as shown on the Check Run.
type Step struct {
	Name       string    `json:"name"`
	State      string    `json:"state"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
}

// Preview is one URL a deployment serves.
type Preview struct {
	Name string `json:"name"`
	URL  string `json:"url"`
}

// Deployment is one attempt at one generation of an environment.
type Deployment struct {
	bun.BaseModel `bun:"table:deployments"`

	ID            int64      `bun:"id,pk,autoincrement"`
	EnvironmentID int64      `bun:"environment_id,notnull"`
	Generation    int64      `bun:"generation,notnull"`
	SHA           string     `bun:"sha,notnull"`
	CheckRunID    int64      `bun:"check_run_id,notnull"`
	Status        string     `bun:"status,notnull"`
	Conclusion    string     `bun:"conclusion,notnull"`
	Steps         []Step     `bun:"steps,type:jsonb,notnull"`
	Previews      []Preview  `bun:"previews,type:jsonb,notnull"`
	Error         string     `bun:"error,notnull"`
	LogTail       string     `bun:"log_tail,notnull"`
	StartedAt     *time.Time `bun:"started_at"`
	FinishedAt    *time.Time `bun:"finished_at"`
	CreatedAt     time.Time  `bun:"created_at,nullzero,notnull,default:current_timestamp"`
	UpdatedAt     time.Time  `bun:"updated_at,nullzero,notnull,default:current_timestamp"`
}

// Command sources.
const (
	SourceComment   = "comment"
	SourceButton    = "button"
	SourceRerequest = "rerequest"
)

// Command statuses.
const (
	CommandPending = "pending"
	CommandApplied = "applied" // authorised and turned into desired state; awaiting its outcome
	CommandDone    = "done"
	CommandRefused = "refused"
)

// CommandReply is the command name of a comment that only needs an answer
// (help, an unknown command, a usage error); its Reply holds the answer.
const CommandReply = "reply"

// Command is a slash command or button press waiting to be carried out.
type Command struct {
	bun.BaseModel `bun:"table:commands"`

	ID               int64     `bun:"id,pk,autoincrement"`
	EnvironmentID    int64     `bun:"environment_id,notnull"`
	DeliveryID       string    `bun:"delivery_id,notnull"`
	Source           string    `bun:"source,notnull"`
	CommentID        int64     `bun:"comment_id,notnull"`
	Actor            string    `bun:"actor,notnull"`
	Name             string    `bun:"name,notnull"`
	Status           string    `bun:"status,notnull"`
	TargetGeneration int64     `bun:"target_generation,notnull"`
	Reply            string    `bun:"reply,notnull"`
	CreatedAt        time.Time `bun:"created_at,nullzero,notnull,default:current_timestamp"`
	UpdatedAt        time.Time `bun:"updated_at,nullzero,notnull,default:current_timestamp"`
}

type WebhookDelivery struct {
	bun.BaseModel `bun:"table:webhook_deliveries"`

	DeliveryID     string     `bun:"delivery_id,pk"`
	Event          string     `bun:"event,notnull"`
	Action         string     `bun:"action,notnull"`
	InstallationID int64      `bun:"installation_id,notnull"`
	Status         string     `bun:"status,notnull"`
	Error          string     `bun:"error,notnull"`
	Attempts       int        `bun:"attempts,notnull"`
	ReceivedAt     time.Time  `bun:"received_at,nullzero,notnull,default:current_timestamp"`
	ProcessedAt    *time.Time `bun:"processed_at"`
}

type AuditLog struct {
	bun.BaseModel `bun:"table:audit_logs"`

	ID            int64           `bun:"id,pk,autoincrement"`
	At            time.Time       `bun:"at,nullzero,notnull,default:current_timestamp"`
	Actor         string          `bun:"actor,notnull"`
	Action        string          `bun:"action,notnull"`
	EnvironmentID *int64          `bun:"environment_id"`
	Details       json.RawMessage `bun:"details,type:jsonb,notnull"`
}
