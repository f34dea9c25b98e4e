//! Indexes for a large fleet, found by the fleet benchmark: the dispatch loop asks, for every connected
//! agent, for the oldest queued execution of the datasources bound to it (`datasource.agent_id`, and queued
//! executions by datasource), and every heartbeat looks up the agent's running attempts
//! (`execution.agent_id` among running ones). Without them each of those statements read whole tables.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0019_dispatch_indexes"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS datasource_agent ON datasource (agent_id); \
                 CREATE INDEX IF NOT EXISTS execution_queued ON execution (datasource_id, created_at) \
                     WHERE status = 'queued'; \
                 CREATE INDEX IF NOT EXISTS execution_agent_running ON execution (agent_id) WHERE status = 'running'",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP INDEX IF EXISTS execution_agent_running; DROP INDEX IF EXISTS execution_queued; \
                 DROP INDEX IF EXISTS datasource_agent",
            )
            .await
            .map(|_| ())
    }
}
