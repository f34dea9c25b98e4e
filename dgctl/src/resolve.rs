//! Names to resources: every command takes a name or an id. A reference matches an exact id first, then an
//! exact name, then (for ids only, at least 6 characters) a unique id prefix. No match, or several, is a
//! "not found" error (exit 3) that says which.

use dg_proto::v1::{
    self as pb, agent_service_client::AgentServiceClient, backup_job_service_client::BackupJobServiceClient,
    backup_service_client::BackupServiceClient, datasource_service_client::DatasourceServiceClient,
    notification_service_client::NotificationServiceClient, restore_drill_service_client::RestoreDrillServiceClient,
    storage_service_client::StorageServiceClient,
};

use crate::{
    connect::Session,
    error::{CliError, CliResult},
};

const PAGE: i32 = 500;

/// Picks the one item `wanted` names among `items`.
pub fn pick<'a, T>(
    kind: &str,
    wanted: &str,
    items: &'a [T],
    id: impl Fn(&T) -> &str,
    name: impl Fn(&T) -> &str,
) -> CliResult<&'a T> {
    if let Some(hit) = items.iter().find(|i| id(i) == wanted) {
        return Ok(hit);
    }
    let by_name: Vec<&T> = items.iter().filter(|i| name(i) == wanted).collect();
    match by_name.as_slice() {
        [one] => return Ok(one),
        [] => {}
        many => {
            let ids: Vec<&str> = many.iter().map(|i| id(i)).collect();
            return Err(CliError::NotFound(format!(
                "{kind} name \"{wanted}\" is ambiguous: {} match (ids {}); use an id",
                many.len(),
                ids.join(", ")
            )));
        }
    }
    if wanted.len() >= 6 {
        let by_prefix: Vec<&T> = items.iter().filter(|i| id(i).starts_with(wanted)).collect();
        if let [one] = by_prefix.as_slice() {
            return Ok(one);
        }
        if by_prefix.len() > 1 {
            return Err(CliError::NotFound(format!("{kind} id prefix \"{wanted}\" is ambiguous")));
        }
    }
    Err(CliError::NotFound(format!("no {kind} named \"{wanted}\"")))
}

macro_rules! list_all {
    ($fn_name:ident, $client:ident, $req:ident, $method:ident, $field:ident, $item:ty) => {
        /// Every item, all pages.
        #[allow(clippy::needless_update)] // some list requests have filters, some do not
        pub async fn $fn_name(s: &Session) -> CliResult<Vec<$item>> {
            let mut c = $client::new(s.channel.clone());
            let (mut out, mut token) = (Vec::new(), String::new());
            loop {
                let r = c.$method(s.req(pb::$req { page_size: PAGE, page_token: token.clone() })).await?.into_inner();
                out.extend(r.$field);
                if r.next_page_token.is_empty() {
                    return Ok(out);
                }
                token = r.next_page_token;
            }
        }
    };
}

list_all!(agents, AgentServiceClient, ListAgentsRequest, list_agents, agents, pb::Agent);
list_all!(datasources, DatasourceServiceClient, ListDatasourcesRequest, list_datasources, datasources, pb::Datasource);
list_all!(storages, StorageServiceClient, ListStoragesRequest, list_storages, storages, pb::Storage);
list_all!(jobs, BackupJobServiceClient, ListBackupJobsRequest, list_backup_jobs, jobs, pb::BackupJob);
list_all!(drills, RestoreDrillServiceClient, ListRestoreDrillsRequest, list_restore_drills, drills, pb::RestoreDrill);
list_all!(channels, NotificationServiceClient, ListChannelsRequest, list_channels, channels, pb::NotificationChannel);

/// Backups, all pages, optionally of one datasource.
pub async fn backups(s: &Session, datasource_id: &str) -> CliResult<Vec<pb::Backup>> {
    let mut c = BackupServiceClient::new(s.channel.clone());
    let (mut out, mut token) = (Vec::new(), String::new());
    loop {
        let r = c
            .list_backups(s.req(pb::ListBackupsRequest {
                datasource_id: datasource_id.into(),
                page_size: PAGE,
                page_token: token.clone(),
            }))
            .await?
            .into_inner();
        out.extend(r.backups);
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        token = r.next_page_token;
    }
}

/// The agent `r` names (id or host name).
pub async fn agent(s: &Session, r: &str) -> CliResult<pb::Agent> {
    let all = agents(s).await?;
    pick("agent", r, &all, |a| &a.id, |a| &a.hostname).cloned()
}

/// The datasource `r` names.
pub async fn datasource(s: &Session, r: &str) -> CliResult<pb::Datasource> {
    let all = datasources(s).await?;
    pick("datasource", r, &all, |a| &a.id, |a| &a.name).cloned()
}

/// The storage `r` names.
pub async fn storage(s: &Session, r: &str) -> CliResult<pb::Storage> {
    let all = storages(s).await?;
    pick("storage", r, &all, |a| &a.id, |a| &a.name).cloned()
}

/// The job `r` names.
pub async fn job(s: &Session, r: &str) -> CliResult<pb::BackupJob> {
    let all = jobs(s).await?;
    pick("job", r, &all, |a| &a.id, |a| &a.name).cloned()
}

/// The drill `r` names.
pub async fn drill(s: &Session, r: &str) -> CliResult<pb::RestoreDrill> {
    let all = drills(s).await?;
    pick("drill", r, &all, |a| &a.id, |a| &a.name).cloned()
}

/// The notification channel `r` names.
pub async fn channel(s: &Session, r: &str) -> CliResult<pb::NotificationChannel> {
    let all = channels(s).await?;
    pick("notification channel", r, &all, |a| &a.id, |a| &a.name).cloned()
}

/// The backup `r` names: an id, a unique id prefix, or `latest` (optionally of one job's name).
pub async fn backup(s: &Session, r: &str) -> CliResult<pb::Backup> {
    let all = backups(s, "").await?;
    if r == "latest" {
        return all.into_iter().next().ok_or_else(|| CliError::NotFound("no backups".into()));
    }
    if let Some(job_ref) = r.strip_prefix("latest:") {
        let j = job(s, job_ref).await?;
        return all
            .into_iter()
            .find(|b| b.job_id == j.id)
            .ok_or_else(|| CliError::NotFound(format!("job \"{job_ref}\" has no backups")));
    }
    pick("backup", r, &all, |b| &b.id, |b| &b.id).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items() -> Vec<(String, String)> {
        vec![
            ("0a1b2c3d-0000".into(), "app".into()),
            ("0a1b2c3d-1111".into(), "dup".into()),
            ("ffffeeee-2222".into(), "dup".into()),
        ]
    }

    #[test]
    fn names_ids_prefixes_and_ambiguity() {
        let all = items();
        let p = |w: &str| pick("thing", w, &all, |i| &i.0, |i| &i.1).map(|i| i.0.clone());
        assert_eq!(p("app").expect("by name"), "0a1b2c3d-0000");
        assert_eq!(p("ffffeeee-2222").expect("by id"), "ffffeeee-2222");
        assert_eq!(p("ffffee").expect("by prefix"), "ffffeeee-2222");
        let amb = p("dup").expect_err("ambiguous name");
        assert!(amb.to_string().contains("ambiguous"), "{amb}");
        assert_eq!(amb.exit_code(), 3);
        assert!(p("0a1b2c").expect_err("ambiguous prefix").to_string().contains("ambiguous"));
        let none = p("nope").expect_err("unknown");
        assert_eq!(none.exit_code(), 3);
        assert!(p("ff").is_err(), "short prefixes never match");
    }
}
