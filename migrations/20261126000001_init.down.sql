DROP TABLE IF EXISTS audit_logs, webhook_deliveries, commands, deployments, environments, repositories, installations;
