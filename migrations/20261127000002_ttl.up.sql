-- What the reaper needs on an environment. ttl_seconds is the effective
-- time to live (.stagely.yml's ttl, or the server's default) recorded when
-- a deploy reads the configuration; 0 means none is known yet, and such an
-- environment is never reaped for inactivity. The environment is idle past
-- it once touched_at (the last push or command) is older than that.
--
-- reaped_generation and reaped_reason say which generation the reaper asked
-- for and why, so the reconciler can tell the user: "idle" (a destroy after
-- the TTL), "stuck_retry" (no progress past the deadline: retried once) or
-- "stuck" (still no progress: the deployment is reported as failed). They
-- apply only while desired_generation equals reaped_generation.
ALTER TABLE environments
    ADD COLUMN ttl_seconds       bigint NOT NULL DEFAULT 0,
    ADD COLUMN reaped_generation bigint NOT NULL DEFAULT 0,
    ADD COLUMN reaped_reason     text   NOT NULL DEFAULT '';

-- The idle sweep looks only at environments that want to run and have a TTL.
CREATE INDEX idx_environments_touched_at_running ON environments (touched_at)
    WHERE desired_state = 'running' AND ttl_seconds > 0;
