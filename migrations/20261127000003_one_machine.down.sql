DROP INDEX IF EXISTS idx_agents_environment_id_live;
