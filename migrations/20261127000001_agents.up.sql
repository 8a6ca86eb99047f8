-- Machines and their agents: one row per provisioning attempt of an
-- environment. key is the provider's idempotency key, so a create retried
-- after a crash finds the machine it already made.
CREATE TABLE agents (
    id             bigserial PRIMARY KEY,
    environment_id bigint      NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    attempt        integer     NOT NULL,
    key            text        NOT NULL UNIQUE,
    provider       text        NOT NULL,
    machine_id     text        NOT NULL DEFAULT '',
    bootstrap_hash text        NOT NULL UNIQUE,
    token_hash     text        UNIQUE,
    state          text        NOT NULL DEFAULT 'provisioning', -- provisioning | running | destroyed
    hostname       text        NOT NULL DEFAULT '',
    version        text        NOT NULL DEFAULT '',
    last_seen_at   timestamptz,
    destroyed_at   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_agents_environment_id ON agents (environment_id);

-- The deployment as handed to the agent (agent/protocol.Deployment), and
-- what the agent reported back, step by step.
ALTER TABLE deployments ADD COLUMN agent_spec jsonb;
CREATE TABLE deployment_steps (
    id             bigserial PRIMARY KEY,
    environment_id bigint      NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    generation     bigint      NOT NULL,
    name           text        NOT NULL,
    state          text        NOT NULL,
    message        text        NOT NULL DEFAULT '',
    started_at     timestamptz NOT NULL,
    finished_at    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_deployment_steps_environment_id_generation ON deployment_steps (environment_id, generation);
