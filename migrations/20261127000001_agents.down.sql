DROP TABLE IF EXISTS deployment_steps;
ALTER TABLE deployments DROP COLUMN IF EXISTS agent_spec;
DROP TABLE IF EXISTS agents;
