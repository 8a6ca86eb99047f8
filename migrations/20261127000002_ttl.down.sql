DROP INDEX IF EXISTS idx_environments_touched_at_running;
ALTER TABLE environments
    DROP COLUMN IF EXISTS reaped_reason,
    DROP COLUMN IF EXISTS reaped_generation,
    DROP COLUMN IF EXISTS ttl_seconds;
