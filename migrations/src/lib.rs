//! Controller schema migrations (sea-orm-migration). Applied at controller start under a PostgreSQL advisory
//! lock, so replicas starting together do not race, and by `dg-controller migrate`. Migrations are plain SQL:
//! additive, never edited once released.

use sea_orm_migration::prelude::*;

mod m0001_initial;
mod m0002_operator_api;
mod m0003_data_path;
mod m0004_globals;
mod m0005_attempts;
mod m0006_sweeps;
mod m0007_restore_trust;
mod m0008_revocation;
mod m0009_bootstrap;
mod m0010_retention;
mod m0011_verify;
mod m0012_drills;
mod m0013_notifications;
mod m0014_scrub;
mod m0015_import;
mod m0016_access;
mod m0017_adaptive;
mod m0018_parallel;
mod m0019_dispatch_indexes;

/// The ordered list of migrations.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_initial::Migration),
            Box::new(m0002_operator_api::Migration),
            Box::new(m0003_data_path::Migration),
            Box::new(m0004_globals::Migration),
            Box::new(m0005_attempts::Migration),
            Box::new(m0006_sweeps::Migration),
            Box::new(m0007_restore_trust::Migration),
            Box::new(m0008_revocation::Migration),
            Box::new(m0009_bootstrap::Migration),
            Box::new(m0010_retention::Migration),
            Box::new(m0011_verify::Migration),
            Box::new(m0012_drills::Migration),
            Box::new(m0013_notifications::Migration),
            Box::new(m0014_scrub::Migration),
            Box::new(m0015_import::Migration),
            Box::new(m0016_access::Migration),
            Box::new(m0017_adaptive::Migration),
            Box::new(m0018_parallel::Migration),
            Box::new(m0019_dispatch_indexes::Migration),
        ]
    }
}
