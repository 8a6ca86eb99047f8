-- Stagely's first schema. Tables are plural snake_case; indexes are
-- idx_<table>_<columns>. GitHub's own ids are used as keys where GitHub
-- owns the thing (installations, repositories).

CREATE TABLE installations (
    id            bigint PRIMARY KEY,           -- GitHub installation id
    account_login text        NOT NULL,
    account_type  text        NOT NULL DEFAULT 'User',
    suspended_at  timestamptz,
    deleted_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE repositories (
    id              bigint PRIMARY KEY,         -- GitHub repository id
    installation_id bigint      NOT NULL REFERENCES installations (id),
    owner           text        NOT NULL,
    name            text        NOT NULL,
    is_private      boolean     NOT NULL DEFAULT false,
    removed_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_repositories_installation_id ON repositories (installation_id);

-- One environment per pull request. desired_* is what the last intent asked
-- for; observed_* is what the reconciler has reached. intent_seq moves on
-- every recorded intent (webhook or command), handled_seq when a worker has
-- dealt with everything up to it: a row needs work while they differ.
CREATE TABLE environments (
    id                  bigserial PRIMARY KEY,
    repository_id       bigint      NOT NULL REFERENCES repositories (id),
    installation_id     bigint      NOT NULL,
    owner               text        NOT NULL,
    repo                text        NOT NULL,
    pr_number           integer     NOT NULL,
    hash                text        NOT NULL UNIQUE,
    head_repo           text        NOT NULL DEFAULT '',
    is_fork             boolean     NOT NULL DEFAULT false,
    is_fork_approved    boolean     NOT NULL DEFAULT false,
    pr_updated_at       timestamptz NOT NULL DEFAULT 'epoch',
    desired_state       text        NOT NULL,
    desired_sha         text        NOT NULL,
    desired_generation  bigint      NOT NULL DEFAULT 1,
    observed_state      text        NOT NULL DEFAULT 'new',
    observed_sha        text        NOT NULL DEFAULT '',
    observed_generation bigint      NOT NULL DEFAULT 0,
    intent_seq          bigint      NOT NULL DEFAULT 1,
    handled_seq         bigint      NOT NULL DEFAULT 0,
    comment_id          bigint      NOT NULL DEFAULT 0,
    last_error          text        NOT NULL DEFAULT '',
    attempts            integer     NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    lease_owner         text        NOT NULL DEFAULT '',
    lease_expires_at    timestamptz,
    touched_at          timestamptz NOT NULL DEFAULT now(),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX idx_environments_repository_id_pr_number ON environments (repository_id, pr_number);
CREATE INDEX idx_environments_next_attempt_at_pending ON environments (next_attempt_at)
    WHERE intent_seq > handled_seq;

-- One deployment per attempt at a generation (a SHA, or a forced redeploy of
-- the same SHA), with its Check Run and the steps it went through.
CREATE TABLE deployments (
    id             bigserial PRIMARY KEY,
    environment_id bigint      NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    generation     bigint      NOT NULL,
    sha            text        NOT NULL,
    check_run_id   bigint      NOT NULL DEFAULT 0,
    status         text        NOT NULL DEFAULT 'queued',
    conclusion     text        NOT NULL DEFAULT '',
    steps          jsonb       NOT NULL DEFAULT '[]',
    previews       jsonb       NOT NULL DEFAULT '[]',
    error          text        NOT NULL DEFAULT '',
    log_tail       text        NOT NULL DEFAULT '',
    started_at     timestamptz,
    finished_at    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX idx_deployments_environment_id_generation ON deployments (environment_id, generation);

-- Slash commands and Check Run buttons, recorded by the webhook handler and
-- carried out (authorised, reacted to, answered) by the reconciler.
CREATE TABLE commands (
    id                bigserial PRIMARY KEY,
    environment_id    bigint      NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    delivery_id       text        NOT NULL,
    source            text        NOT NULL,  -- comment | button | rerequest
    comment_id        bigint      NOT NULL DEFAULT 0,
    actor             text        NOT NULL,
    name              text        NOT NULL,
    status            text        NOT NULL DEFAULT 'pending', -- pending | applied | done | refused
    target_generation bigint      NOT NULL DEFAULT 0,
    reply             text        NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_commands_environment_id_status ON commands (environment_id, status);

CREATE TABLE webhook_deliveries (
    delivery_id     text PRIMARY KEY,            -- X-GitHub-Delivery
    event           text        NOT NULL,
    action          text        NOT NULL DEFAULT '',
    installation_id bigint      NOT NULL DEFAULT 0,
    status          text        NOT NULL,        -- done | failed
    error           text        NOT NULL DEFAULT '',
    attempts        integer     NOT NULL DEFAULT 1,
    received_at     timestamptz NOT NULL DEFAULT now(),
    processed_at    timestamptz
);

CREATE TABLE audit_logs (
    id             bigserial PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    actor          text        NOT NULL,
    action         text        NOT NULL,
    environment_id bigint,
    details        jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_audit_logs_environment_id ON audit_logs (environment_id);
