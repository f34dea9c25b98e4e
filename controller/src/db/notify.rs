//! Persistence of notifications: channels, the event outbox, the inbox and deliveries, and the RPO columns of
//! jobs. [`Db::emit_event`] is the one writer of events: the event (unique `dedup_key`, so a repeated emit of
//! the same fact is a no-op), its inbox item and one delivery per matching channel, in one transaction.
//! Deliveries are claimed with `FOR UPDATE SKIP LOCKED` and a lease (`next_attempt_at` pushed forward), so two
//! replicas never send one delivery at once; the outcome is recorded by compare-and-set on the attempt count.

use chrono::{DateTime, Utc};
use sea_orm::{DbErr, FromQueryResult, TransactionTrait};
use uuid::Uuid;

use super::{Db, Page, execute, fetch_all, fetch_one};

const CH_COLS: &str = "id, name, kind, config, secret_ciphertext, events, selector, max_attempts, timeout_secs, \
                       enabled, created_at, updated_at";
const DL_COLS: &str = "d.id, d.event_id, d.channel_id, e.kind AS event_kind, d.status, d.attempts, d.last_error, \
                       d.last_status, d.next_attempt_at, d.delivered_at, d.created_at";
const EV_COLS: &str = "e.id, e.kind, e.dedup_key, e.job_id, e.datasource_id, e.storage_id, e.agent_id, e.execution_id, \
                       e.labels, e.summary, e.payload, e.created_at";

/// A notification channel row (secrets still sealed).
#[derive(Clone, Debug, FromQueryResult)]
pub struct ChannelRow {
    /// Id (also the AAD of the secret).
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// `webhook`, `slack` or `email`.
    pub kind: String,
    /// Non-secret settings (JSON object).
    pub config: serde_json::Value,
    /// The sealed secret (webhook secret, Slack URL, SMTP password).
    pub secret_ciphertext: Option<Vec<u8>>,
    /// Subscribed event kinds (JSON array of strings).
    pub events: serde_json::Value,
    /// Label selector (JSON object of strings).
    pub selector: serde_json::Value,
    /// Attempts per delivery.
    pub max_attempts: i32,
    /// Per-attempt timeout.
    pub timeout_secs: i32,
    /// Enabled.
    pub enabled: bool,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// An event to record.
#[derive(Clone, Debug, Default)]
pub struct NewEventRow {
    /// Kind (spelling of `EventKind`).
    pub kind: String,
    /// Unique key of the fact.
    pub dedup_key: String,
    /// Subject ids.
    pub job_id: Option<Uuid>,
    /// Subject ids.
    pub datasource_id: Option<Uuid>,
    /// Subject ids.
    pub storage_id: Option<Uuid>,
    /// Subject ids.
    pub agent_id: Option<Uuid>,
    /// Subject ids.
    pub execution_id: Option<Uuid>,
    /// One line for humans.
    pub summary: String,
    /// Details.
    pub payload: serde_json::Value,
    /// Whether it goes to the inbox (every real event does; a channel test does not).
    pub inbox: bool,
    /// Only this channel (a test), else every matching channel.
    pub only_channel: Option<Uuid>,
}

/// A recorded event.
#[derive(Clone, Debug, FromQueryResult)]
pub struct EventRow {
    /// Id.
    pub id: Uuid,
    /// Kind.
    pub kind: String,
    /// Unique key of the fact.
    pub dedup_key: String,
    /// Subject ids.
    pub job_id: Option<Uuid>,
    /// Subject ids.
    pub datasource_id: Option<Uuid>,
    /// Subject ids.
    pub storage_id: Option<Uuid>,
    /// Subject ids.
    pub agent_id: Option<Uuid>,
    /// Subject ids.
    pub execution_id: Option<Uuid>,
    /// Labels of the job and datasource when it happened (job labels win).
    pub labels: serde_json::Value,
    /// One line for humans.
    pub summary: String,
    /// Details.
    pub payload: serde_json::Value,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// An inbox item: the event and whether it was read.
#[derive(Clone, Debug, FromQueryResult)]
pub struct InboxRow {
    /// Id.
    pub id: Uuid,
    /// Kind.
    pub kind: String,
    /// Unique key of the fact.
    pub dedup_key: String,
    /// Subject ids.
    pub job_id: Option<Uuid>,
    /// Subject ids.
    pub datasource_id: Option<Uuid>,
    /// Subject ids.
    pub storage_id: Option<Uuid>,
    /// Subject ids.
    pub agent_id: Option<Uuid>,
    /// Subject ids.
    pub execution_id: Option<Uuid>,
    /// Labels.
    pub labels: serde_json::Value,
    /// One line for humans.
    pub summary: String,
    /// Details.
    pub payload: serde_json::Value,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When read.
    pub read_at: Option<DateTime<Utc>>,
}

/// A delivery record.
#[derive(Clone, Debug, FromQueryResult)]
pub struct DeliveryRow {
    /// Id (the idempotency key receivers see).
    pub id: Uuid,
    /// Event.
    pub event_id: Uuid,
    /// Channel.
    pub channel_id: Uuid,
    /// Kind of the event.
    pub event_kind: String,
    /// pending, delivered or failed.
    pub status: String,
    /// Attempts made (or claimed).
    pub attempts: i32,
    /// Error of the last attempt.
    pub last_error: String,
    /// HTTP status of the last attempt.
    pub last_status: Option<i32>,
    /// Next try.
    pub next_attempt_at: DateTime<Utc>,
    /// When delivered.
    pub delivered_at: Option<DateTime<Utc>>,
    /// Creation.
    pub created_at: DateTime<Utc>,
}

/// Delivery listing filter.
#[derive(Clone, Debug, Default)]
pub struct DeliveryFilter {
    /// Only this channel.
    pub channel_id: Option<Uuid>,
    /// Only this event.
    pub event_id: Option<Uuid>,
    /// Only this status.
    pub status: Option<String>,
}

/// The outcome of one delivery attempt.
#[derive(Clone, Debug)]
pub enum AttemptOutcome {
    /// Accepted by the receiver.
    Delivered {
        /// HTTP status, when HTTP.
        http_status: Option<i32>,
    },
    /// Failed; try again at `retry_at`, or never (`None`: attempts exhausted or not retryable).
    Failed {
        /// HTTP status, when HTTP.
        http_status: Option<i32>,
        /// What went wrong (no secrets).
        error: String,
        /// Next try.
        retry_at: Option<DateTime<Utc>>,
    },
}

/// A job with an objective, as the RPO task sees it.
#[derive(Clone, Debug, FromQueryResult)]
pub struct RpoJobRow {
    /// Job.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Datasource.
    pub datasource_id: Uuid,
    /// Objective.
    pub rpo_secs: i64,
    /// Breach start.
    pub rpo_breached_since: Option<DateTime<Utc>>,
    /// Job creation.
    pub created_at: DateTime<Utc>,
    /// Completion of the newest good backup (completed, with a copy not found damaged or missing).
    pub newest_good: Option<DateTime<Utc>>,
}

#[derive(FromQueryResult)]
struct IdRow {
    id: Uuid,
}

#[derive(FromQueryResult)]
struct Count {
    n: i64,
}

impl Db {
    /// Inserts a channel (its id, already the AAD of its secret, is kept).
    pub async fn insert_channel(&self, c: &ChannelRow) -> Result<ChannelRow, DbErr> {
        fetch_one(
            &self.conn,
            &format!(
                "INSERT INTO notification_channel (id, name, kind, config, secret_ciphertext, events, selector, \
                 max_attempts, timeout_secs, enabled) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 RETURNING {CH_COLS}"
            ),
            channel_values(c),
        )
        .await?
        .ok_or(DbErr::RecordNotInserted)
    }

    /// Writes every mutable field of a channel.
    pub async fn update_channel(&self, c: &ChannelRow) -> Result<Option<ChannelRow>, DbErr> {
        fetch_one(
            &self.conn,
            &format!(
                "UPDATE notification_channel SET name = $2, kind = $3, config = $4, secret_ciphertext = $5, \
                 events = $6, selector = $7, max_attempts = $8, timeout_secs = $9, enabled = $10, \
                 updated_at = now() WHERE id = $1 RETURNING {CH_COLS}"
            ),
            channel_values(c),
        )
        .await
    }

    /// One channel.
    pub async fn channel(&self, id: Uuid) -> Result<Option<ChannelRow>, DbErr> {
        fetch_one(&self.conn, &format!("SELECT {CH_COLS} FROM notification_channel WHERE id = $1"), [id.into()]).await
    }

    /// Channels by name.
    pub async fn list_channels(&self, page: Page) -> Result<Vec<ChannelRow>, DbErr> {
        fetch_all(
            &self.conn,
            &format!("SELECT {CH_COLS} FROM notification_channel ORDER BY name LIMIT $1 OFFSET $2"),
            [page.limit.into(), page.offset.into()],
        )
        .await
    }

    /// Deletes a channel and its deliveries; false when unknown.
    pub async fn delete_channel(&self, id: Uuid) -> Result<bool, DbErr> {
        Ok(execute(&self.conn, "DELETE FROM notification_channel WHERE id = $1", [id.into()]).await? > 0)
    }

    /// Records an event, its inbox item and its deliveries in one transaction. `None` when an event with the
    /// same dedup key exists already (nothing is written then). The labels snapshot merges the datasource's
    /// and the job's labels (the job's win); a channel matches when it is enabled, subscribes to the kind and
    /// its selector is contained in those labels.
    pub async fn emit_event(&self, e: &NewEventRow) -> Result<Option<Uuid>, DbErr> {
        let txn = self.conn.begin().await?;
        let id = Uuid::now_v7();
        let inserted: Option<IdRow> = fetch_one(
            &txn,
            "INSERT INTO notification_event (id, kind, dedup_key, job_id, datasource_id, storage_id, agent_id, \
             execution_id, labels, summary, payload) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, \
                 COALESCE((SELECT labels FROM datasource WHERE id = $5), '{}'::jsonb) \
                   || COALESCE((SELECT labels FROM backup_job WHERE id = $4), '{}'::jsonb), $9, $10 \
             ON CONFLICT (dedup_key) DO NOTHING RETURNING id",
            [
                id.into(),
                e.kind.clone().into(),
                e.dedup_key.clone().into(),
                e.job_id.into(),
                e.datasource_id.into(),
                e.storage_id.into(),
                e.agent_id.into(),
                e.execution_id.into(),
                e.summary.clone().into(),
                e.payload.clone().into(),
            ],
        )
        .await?;
        let Some(IdRow { id }) = inserted else {
            txn.rollback().await?;
            return Ok(None);
        };
        if e.inbox {
            execute(&txn, "INSERT INTO notification_inbox (id) VALUES ($1)", [id.into()]).await?;
        }
        match e.only_channel {
            Some(ch) => {
                execute(
                    &txn,
                    "INSERT INTO notification_delivery (id, event_id, channel_id) VALUES ($1, $2, $3)",
                    [Uuid::now_v7().into(), id.into(), ch.into()],
                )
                .await?;
            }
            None => {
                execute(
                    &txn,
                    "INSERT INTO notification_delivery (id, event_id, channel_id) \
                     SELECT gen_random_uuid(), e.id, c.id FROM notification_event e, notification_channel c \
                     WHERE e.id = $1 AND c.enabled AND c.events @> to_jsonb(e.kind) AND e.labels @> c.selector",
                    [id.into()],
                )
                .await?;
            }
        }
        txn.commit().await?;
        Ok(Some(id))
    }

    /// One event.
    pub async fn event(&self, id: Uuid) -> Result<Option<EventRow>, DbErr> {
        fetch_one(&self.conn, &format!("SELECT {EV_COLS} FROM notification_event e WHERE e.id = $1"), [id.into()]).await
    }

    /// Claims up to `limit` due deliveries of enabled channels: each gets its attempt counted and a lease of
    /// `lease_secs` (its `next_attempt_at`), so no other replica claims it while this one sends.
    pub async fn claim_deliveries(&self, limit: i64, lease_secs: i64) -> Result<Vec<DeliveryRow>, DbErr> {
        fetch_all(
            &self.conn,
            &format!(
                "WITH due AS (SELECT d.id FROM notification_delivery d \
                   JOIN notification_channel c ON c.id = d.channel_id \
                   WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND c.enabled \
                   ORDER BY d.next_attempt_at LIMIT $1 FOR UPDATE OF d SKIP LOCKED), \
                 claimed AS (UPDATE notification_delivery d SET attempts = d.attempts + 1, \
                   next_attempt_at = now() + make_interval(secs => $2), updated_at = now() \
                   FROM due WHERE d.id = due.id RETURNING d.*) \
                 SELECT {DL_COLS} FROM claimed d JOIN notification_event e ON e.id = d.event_id"
            ),
            [limit.into(), (lease_secs as f64).into()],
        )
        .await
    }

    /// Claims one delivery now, whatever its due time (a channel test). `None` when another replica holds it.
    pub async fn claim_delivery_now(&self, id: Uuid, lease_secs: i64) -> Result<Option<DeliveryRow>, DbErr> {
        fetch_one(
            &self.conn,
            &format!(
                "WITH due AS (SELECT id FROM notification_delivery WHERE id = $1 AND status = 'pending' \
                   FOR UPDATE SKIP LOCKED), \
                 claimed AS (UPDATE notification_delivery d SET attempts = d.attempts + 1, \
                   next_attempt_at = now() + make_interval(secs => $2), updated_at = now() \
                   FROM due WHERE d.id = due.id RETURNING d.*) \
                 SELECT {DL_COLS} FROM claimed d JOIN notification_event e ON e.id = d.event_id"
            ),
            [id.into(), (lease_secs as f64).into()],
        )
        .await
    }

    /// Records the outcome of the claimed attempt `attempt`; false when the claim was lost (another attempt
    /// started since, after the lease ran out).
    pub async fn record_attempt(&self, id: Uuid, attempt: i32, o: &AttemptOutcome) -> Result<bool, DbErr> {
        let n = match o {
            AttemptOutcome::Delivered { http_status } => {
                execute(
                    &self.conn,
                    "UPDATE notification_delivery SET status = 'delivered', last_status = $3, last_error = '', \
                     delivered_at = now(), updated_at = now() WHERE id = $1 AND attempts = $2 AND status = 'pending'",
                    [id.into(), attempt.into(), (*http_status).into()],
                )
                .await?
            }
            AttemptOutcome::Failed { http_status, error, retry_at } => {
                execute(
                    &self.conn,
                    "UPDATE notification_delivery SET status = CASE WHEN $5::timestamptz IS NULL THEN 'failed' \
                     ELSE 'pending' END, last_status = $3, last_error = $4, \
                     next_attempt_at = COALESCE($5, next_attempt_at), updated_at = now() \
                     WHERE id = $1 AND attempts = $2 AND status = 'pending'",
                    [id.into(), attempt.into(), (*http_status).into(), error.clone().into(), (*retry_at).into()],
                )
                .await?
            }
        };
        Ok(n > 0)
    }

    /// One delivery.
    pub async fn delivery(&self, id: Uuid) -> Result<Option<DeliveryRow>, DbErr> {
        fetch_one(
            &self.conn,
            &format!(
                "SELECT {DL_COLS} FROM notification_delivery d JOIN notification_event e ON e.id = d.event_id \
                 WHERE d.id = $1"
            ),
            [id.into()],
        )
        .await
    }

    /// The delivery of an event to a channel.
    pub async fn delivery_of(&self, event: Uuid, channel: Uuid) -> Result<Option<DeliveryRow>, DbErr> {
        fetch_one(
            &self.conn,
            &format!(
                "SELECT {DL_COLS} FROM notification_delivery d JOIN notification_event e ON e.id = d.event_id \
                 WHERE d.event_id = $1 AND d.channel_id = $2"
            ),
            [event.into(), channel.into()],
        )
        .await
    }

    /// Deliveries, newest first.
    pub async fn list_deliveries(&self, f: &DeliveryFilter, page: Page) -> Result<Vec<DeliveryRow>, DbErr> {
        fetch_all(
            &self.conn,
            &format!(
                "SELECT {DL_COLS} FROM notification_delivery d JOIN notification_event e ON e.id = d.event_id \
                 WHERE ($1::uuid IS NULL OR d.channel_id = $1) AND ($2::uuid IS NULL OR d.event_id = $2) \
                 AND ($3::text IS NULL OR d.status = $3) ORDER BY d.created_at DESC, d.id DESC LIMIT $4 OFFSET $5"
            ),
            [f.channel_id.into(), f.event_id.into(), f.status.clone().into(), page.limit.into(), page.offset.into()],
        )
        .await
    }

    /// Inbox items, newest first.
    pub async fn list_inbox(&self, unread_only: bool, page: Page) -> Result<Vec<InboxRow>, DbErr> {
        fetch_all(
            &self.conn,
            &format!(
                "SELECT {EV_COLS}, i.read_at FROM notification_inbox i JOIN notification_event e ON e.id = i.id \
                 WHERE (NOT $1 OR i.read_at IS NULL) ORDER BY i.created_at DESC, i.id DESC LIMIT $2 OFFSET $3"
            ),
            [unread_only.into(), page.limit.into(), page.offset.into()],
        )
        .await
    }

    /// Unread items in the inbox.
    pub async fn inbox_unread(&self) -> Result<i64, DbErr> {
        Ok(fetch_one::<Count>(&self.conn, "SELECT count(*) AS n FROM notification_inbox WHERE read_at IS NULL", [])
            .await?
            .map_or(0, |c| c.n))
    }

    /// Marks items read (all unread ones when `ids` is `None`); returns how many changed.
    pub async fn mark_inbox_read(&self, ids: Option<&[Uuid]>) -> Result<u64, DbErr> {
        match ids {
            None => {
                execute(&self.conn, "UPDATE notification_inbox SET read_at = now() WHERE read_at IS NULL", []).await
            }
            Some(ids) => {
                let mut n = 0;
                let txn = self.conn.begin().await?;
                for id in ids {
                    n += execute(
                        &txn,
                        "UPDATE notification_inbox SET read_at = now() WHERE id = $1 AND read_at IS NULL",
                        [(*id).into()],
                    )
                    .await?;
                }
                txn.commit().await?;
                Ok(n)
            }
        }
    }

    /// Deletes an inbox item (the event and its deliveries stay); false when unknown.
    pub async fn delete_inbox_item(&self, id: Uuid) -> Result<bool, DbErr> {
        Ok(execute(&self.conn, "DELETE FROM notification_inbox WHERE id = $1", [id.into()]).await? > 0)
    }

    /// Jobs with an objective and the completion time of their newest good backup.
    pub async fn rpo_jobs(&self) -> Result<Vec<RpoJobRow>, DbErr> {
        fetch_all(
            &self.conn,
            "SELECT j.id, j.name, j.datasource_id, j.rpo_secs, j.rpo_breached_since, j.created_at, \
               (SELECT max(x.finished_at) FROM execution x WHERE x.job_id = j.id AND x.operation = 'backup' \
                  AND x.status = 'completed' AND EXISTS (SELECT 1 FROM backup_copy c WHERE c.execution_id = x.id \
                  AND c.complete AND coalesce(c.verify_status, 'intact') = 'intact')) \
                 AS newest_good \
             FROM backup_job j WHERE j.rpo_secs > 0",
            [],
        )
        .await
    }

    /// Agents (not revoked) without a live session whose last heartbeat is older than `secs`: id, host name,
    /// last heartbeat.
    pub async fn agents_offline_for(&self, secs: i64) -> Result<Vec<(Uuid, String, DateTime<Utc>)>, DbErr> {
        #[derive(FromQueryResult)]
        struct Row {
            id: Uuid,
            hostname: String,
            last_heartbeat_at: DateTime<Utc>,
        }
        let rows: Vec<Row> = fetch_all(
            &self.conn,
            "SELECT id, hostname, last_heartbeat_at FROM agent WHERE revoked_at IS NULL AND NOT connected              AND last_heartbeat_at IS NOT NULL AND last_heartbeat_at < now() - make_interval(secs => $1)",
            [(secs as f64).into()],
        )
        .await?;
        Ok(rows.into_iter().map(|r| (r.id, r.hostname, r.last_heartbeat_at)).collect())
    }

    /// Compare-and-set of a job's breach start: from `from` to `to`. False when it was not `from`.
    pub async fn set_rpo_breached(
        &self,
        job: Uuid,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<bool, DbErr> {
        Ok(execute(
            &self.conn,
            "UPDATE backup_job SET rpo_breached_since = $3 WHERE id = $1 AND rpo_secs > 0 \
             AND rpo_breached_since IS NOT DISTINCT FROM $2",
            [job.into(), from.into(), to.into()],
        )
        .await?
            > 0)
    }
}

fn channel_values(c: &ChannelRow) -> [sea_orm::Value; 10] {
    [
        c.id.into(),
        c.name.clone().into(),
        c.kind.clone().into(),
        c.config.clone().into(),
        c.secret_ciphertext.clone().into(),
        c.events.clone().into(),
        c.selector.clone().into(),
        c.max_attempts.into(),
        c.timeout_secs.into(),
        c.enabled.into(),
    ]
}
