-- An environment has at most one live machine. The deployer records a
-- machine's row before asking the provider for it and retires the row only
-- once the machine is gone, so this index makes "never two machines for one
-- environment" a property of the database: a second provisioning attempt,
-- from a worker that lost its lease say, fails on it instead of creating a
-- VM.
CREATE UNIQUE INDEX idx_agents_environment_id_live ON agents (environment_id) WHERE destroyed_at IS NULL;
