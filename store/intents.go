package store

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/uptrace/bun"
)

// RepoRef identifies a repository and the installation that reaches it, as
// a webhook names them.
type RepoRef struct {
	InstallationID int64
	RepositoryID   int64
	Owner          string
	Name           string
	IsPrivate      bool
}

// PullRequestIntent is what a pull_request webhook asks for.
type PullRequestIntent struct {
	Repo      RepoRef
	PRNumber  int
	HeadRepo  string // owner/name of the head repository
	IsFork    bool
	HeadSHA   string
	Desired   string    // DesiredRunning or DesiredDestroyed
	UpdatedAt time.Time // pull_request.updated_at: orders deliveries that arrive out of order
}

// EnsureRepository records the repository (and a minimal installation row)
// if they are not known yet, so intents never fail for a repository whose
// installation event was missed.
func EnsureRepository(ctx context.Context, tx bun.IDB, r RepoRef) error {
	// Inserts only when missing and updates only when something changed:
	// an unconditional upsert would lock the repository's row and make
	// every delivery for a busy repository wait on the one before it.
	_, err := raw(tx).ExecContext(ctx, `
WITH i AS (INSERT INTO installations (id, account_login) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING),
     n AS (INSERT INTO repositories (id, installation_id, owner, name, is_private)
           VALUES ($3, $1, $2, $4, $5) ON CONFLICT (id) DO NOTHING)
UPDATE repositories SET installation_id = $1, owner = $2, name = $4, is_private = $5, removed_at = NULL, updated_at = now()
 WHERE id = $3 AND (installation_id, owner, name, is_private, removed_at)
       IS DISTINCT FROM ($1::bigint, $2::text, $4::text, $5::boolean, NULL::timestamptz)`,
		r.InstallationID, r.Owner, r.RepositoryID, r.Name, r.IsPrivate)
	if err != nil {
		return fmt.Errorf("ensure repository %s/%s: %w", r.Owner, r.Name, err)
	}
	return nil
}

// CommandIntent is a slash command or button press on a pull request.
type CommandIntent struct {
	Repo       RepoRef
	PRNumber   int
	DeliveryID string
	Source     string
	CommentID  int64
	Actor      string
	Name       string
	Reply      string // for CommandReply: the answer to post
}

// RecordCommand stores a command for the reconciler to authorise and carry
// out. A pull request Stagely has not seen yet gets an environment with no
// desired SHA; the reconciler looks its head up if the command deploys. It
// does not touch the environment (its idle clock): anyone may comment, and
// only a command the reconciler carries out for a writer keeps a preview
// alive.
func RecordCommand(ctx context.Context, tx bun.IDB, in CommandIntent) (envID int64, err error) {
	if err := EnsureRepository(ctx, tx, in.Repo); err != nil {
		return 0, err
	}
	hash, err := NewHash()
	if err != nil {
		return 0, err
	}
	err = tx.NewRaw(`
INSERT INTO environments (repository_id, installation_id, owner, repo, pr_number, hash,
                          desired_state, desired_sha, desired_generation)
VALUES (?, ?, ?, ?, ?, ?, 'running', '', 0)
ON CONFLICT (repository_id, pr_number) DO UPDATE SET
    -- A repository keeps its id when renamed or transferred: the worker
    -- must reach it as the command's event names it, not as it was.
    installation_id = excluded.installation_id, owner = excluded.owner, repo = excluded.repo,
    intent_seq = environments.intent_seq + 1, next_attempt_at = now(), updated_at = now()
RETURNING id`,
		in.Repo.RepositoryID, in.Repo.InstallationID, in.Repo.Owner, in.Repo.Name, in.PRNumber, hash).Scan(ctx, &envID)
	if err != nil {
		return 0, fmt.Errorf("record command for %s/%s#%d: %w", in.Repo.Owner, in.Repo.Name, in.PRNumber, err)
	}
	cmd := &Command{
		EnvironmentID: envID, DeliveryID: in.DeliveryID, Source: in.Source, CommentID: in.CommentID,
		Actor: in.Actor, Name: in.Name, Reply: in.Reply, Status: CommandPending,
	}
	if _, err := tx.NewInsert().Model(cmd).Exec(ctx); err != nil {
		return 0, fmt.Errorf("record command %s by %s: %w", in.Name, in.Actor, err)
	}
	return envID, nil
}

// hashAlphabet keeps preview host labels lowercase DNS-safe and unambiguous.
const hashAlphabet = "abcdefghijkmnpqrstuvwxyz23456789"

// NewHash returns a random 12-character DNS label for a preview hostname.
// It is random rather than derived from the repository so that preview
// URLs of private repositories cannot be guessed.
func NewHash() (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate preview hash: %w", err)
	}
	for i := range b {
		b[i] = hashAlphabet[int(b[i])%len(hashAlphabet)]
	}
	return string(b[:]), nil
}

// Audit appends an audit log entry.
func Audit(ctx context.Context, db bun.IDB, actor, action string, envID int64, details any) error {
	_, err := db.NewRaw(`INSERT INTO audit_logs (actor, action, environment_id, details) VALUES (?, ?, NULLIF(?, 0), ?)`,
		actor, action, envID, jsonb(details)).Exec(ctx)
	if err != nil {
		return fmt.Errorf("audit %s by %s: %w", action, actor, err)
	}
	return nil
}
