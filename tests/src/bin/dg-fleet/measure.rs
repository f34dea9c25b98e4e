//! One measurement window: snapshots before and after of the controllers' CPU time, memory and descriptors
//! (/proc), PostgreSQL's counters for the controllers' database (`pg_stat_database`: transactions and rows
//! written; `pg_stat_user_tables`: rows written per table, to tell heartbeat writes from the rest), the CPU
//! time of the PostgreSQL backends serving that database, Redis's command count, and the heartbeats the fleet
//! sent. PostgreSQL publishes a backend's counters when it goes idle, at most once a second (ten seconds for
//! a backend that stays idle), so window edges are blurred by about that much.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use sqlx::{Connection as _, PgConnection, Row as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    fleet::Fleet,
    procfs,
    stats::per_sec,
    world::{World, database_url},
};

/// Rows inserted, updated and deleted, and the scans of one table.
#[derive(Clone, Copy, Debug, Default)]
struct TableCounters {
    writes: i64,
    scans: i64,
}

/// The counters of one moment.
struct Snapshot {
    at: Instant,
    controllers: Vec<Option<u64>>,
    own: Option<u64>,
    backends: HashMap<u32, u64>,
    xact: i64,
    writes: i64,
    fetched: i64,
    tables: BTreeMap<String, TableCounters>,
    heartbeats: u64,
    redis: Option<u64>,
}

/// The figures of one window.
#[derive(Clone, Debug, Default)]
pub(crate) struct Window {
    pub(crate) secs: f64,
    /// CPU of each replica, % of one core.
    pub(crate) controller_cpu: Vec<f64>,
    /// VmRSS of each replica at the end.
    pub(crate) controller_rss: Vec<u64>,
    /// VmHWM (peak RSS) of each replica at the end.
    pub(crate) controller_hwm: Vec<u64>,
    /// Open descriptors of each replica at the end.
    pub(crate) controller_fds: Vec<usize>,
    /// This process (the fleet), % of one core.
    pub(crate) fleet_cpu: f64,
    /// The PostgreSQL backends serving the controllers' database, % of one core.
    pub(crate) pg_cpu: f64,
    pub(crate) xact_per_sec: f64,
    /// Rows inserted + updated + deleted per second.
    pub(crate) writes_per_sec: f64,
    pub(crate) fetched_per_sec: f64,
    /// Rows written per second per table, busiest first (only tables written to).
    pub(crate) table_writes: Vec<(String, f64)>,
    /// Scans (sequential + index) per second per table, busiest first.
    pub(crate) table_scans: Vec<(String, f64)>,
    pub(crate) heartbeats_per_sec: f64,
    pub(crate) redis_per_sec: Option<f64>,
}

impl Window {
    /// Summed CPU of the replicas.
    pub(crate) fn cpu(&self) -> f64 {
        self.controller_cpu.iter().sum()
    }

    /// Summed VmRSS of the replicas.
    pub(crate) fn rss(&self) -> u64 {
        self.controller_rss.iter().sum()
    }

    /// Rows written per second to one table.
    pub(crate) fn table(&self, name: &str) -> f64 {
        self.table_writes.iter().find(|(t, _)| t == name).map(|(_, w)| *w).unwrap_or(0.0)
    }
}

/// Measures the controllers of `world` over `secs` while `fleet` runs.
pub(crate) async fn window(world: &World, fleet: &Fleet, secs: u64, ticks_per_sec: u64) -> anyhow::Result<Window> {
    let mut admin = PgConnection::connect(&dg_tests::pg_admin_url()).await?;
    let mut own_db = PgConnection::connect(&database_url(&world.db_name)?).await?;
    let before = snapshot(world, fleet, &mut admin, &mut own_db).await?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let after = snapshot(world, fleet, &mut admin, &mut own_db).await?;
    let _ = admin.close().await;
    let _ = own_db.close().await;
    let over = after.at - before.at;
    let cpu = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => procfs::cpu_percent(b.saturating_sub(a), ticks_per_sec, over),
        _ => 0.0,
    };
    // Backends that started within the window count from zero.
    let pg_ticks: u64 =
        after.backends.iter().map(|(pid, t)| t.saturating_sub(before.backends.get(pid).copied().unwrap_or(0))).sum();
    let rate = |a: i64, b: i64| per_sec((b - a).max(0) as f64, over);
    let mut table_writes: Vec<(String, f64)> = Vec::new();
    let mut table_scans: Vec<(String, f64)> = Vec::new();
    for (name, b) in &after.tables {
        let a = before.tables.get(name).copied().unwrap_or_default();
        if b.writes > a.writes {
            table_writes.push((name.clone(), rate(a.writes, b.writes)));
        }
        if b.scans > a.scans {
            table_scans.push((name.clone(), rate(a.scans, b.scans)));
        }
    }
    table_writes.sort_by(|x, y| y.1.total_cmp(&x.1));
    table_scans.sort_by(|x, y| y.1.total_cmp(&x.1));
    let pids: Vec<u32> = world.controllers.iter().map(|c| c.pid).collect();
    Ok(Window {
        secs: over.as_secs_f64(),
        controller_cpu: before.controllers.iter().zip(&after.controllers).map(|(a, b)| cpu(*a, *b)).collect(),
        controller_rss: pids.iter().map(|p| procfs::status_bytes(*p, "VmRSS").unwrap_or(0)).collect(),
        controller_hwm: pids.iter().map(|p| procfs::status_bytes(*p, "VmHWM").unwrap_or(0)).collect(),
        controller_fds: pids.iter().map(|p| procfs::open_fds(*p).unwrap_or(0)).collect(),
        fleet_cpu: cpu(before.own, after.own),
        pg_cpu: procfs::cpu_percent(pg_ticks, ticks_per_sec, over),
        xact_per_sec: rate(before.xact, after.xact),
        writes_per_sec: rate(before.writes, after.writes),
        fetched_per_sec: rate(before.fetched, after.fetched),
        table_writes,
        table_scans,
        heartbeats_per_sec: per_sec((after.heartbeats - before.heartbeats) as f64, over),
        redis_per_sec: before.redis.zip(after.redis).map(|(a, b)| per_sec(b.saturating_sub(a) as f64, over)),
    })
}

async fn snapshot(
    world: &World,
    fleet: &Fleet,
    admin: &mut PgConnection,
    own_db: &mut PgConnection,
) -> anyhow::Result<Snapshot> {
    let db = sqlx::query(
        "SELECT xact_commit + xact_rollback AS xact, tup_inserted + tup_updated + tup_deleted AS writes, \
         tup_fetched AS fetched FROM pg_stat_database WHERE datname = $1",
    )
    .bind(&world.db_name)
    .fetch_one(&mut *admin)
    .await?;
    let pids = sqlx::query("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(&world.db_name)
        .fetch_all(&mut *admin)
        .await?;
    let mut backends = HashMap::new();
    for row in pids {
        let pid: i32 = row.try_get("pid")?;
        if let Ok(pid) = u32::try_from(pid)
            && let Some(t) = procfs::cpu_ticks(pid)
        {
            backends.insert(pid, t);
        }
    }
    let rows = sqlx::query(
        "SELECT relname::text AS name, n_tup_ins + n_tup_upd + n_tup_del AS writes, \
         coalesce(seq_scan, 0) + coalesce(idx_scan, 0) AS scans FROM pg_stat_user_tables",
    )
    .fetch_all(&mut *own_db)
    .await?;
    let mut tables = BTreeMap::new();
    for r in rows {
        tables.insert(r.try_get("name")?, TableCounters { writes: r.try_get("writes")?, scans: r.try_get("scans")? });
    }
    Ok(Snapshot {
        at: Instant::now(),
        controllers: world.controllers.iter().map(|c| procfs::cpu_ticks(c.pid)).collect(),
        own: procfs::cpu_ticks(std::process::id()),
        backends,
        xact: db.try_get("xact")?,
        writes: db.try_get("writes")?,
        fetched: db.try_get("fetched")?,
        tables,
        heartbeats: fleet.heartbeats(),
        redis: redis_commands(&world.redis_url).await,
    })
}

/// `total_commands_processed` of a plain (`redis://`) Redis, spoken in RESP by hand (AUTH when the URL has a
/// password, then INFO stats); `None` when it cannot be read.
async fn redis_commands(url: &str) -> Option<u64> {
    let u = url::Url::parse(url).ok().filter(|u| u.scheme() == "redis")?;
    let mut s = tokio::net::TcpStream::connect((u.host_str()?, u.port().unwrap_or(6379))).await.ok()?;
    let mut out = Vec::new();
    let mut command = |parts: &[&str]| {
        out.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
        for p in parts {
            out.extend_from_slice(format!("${}\r\n{p}\r\n", p.len()).as_bytes());
        }
    };
    if let Some(pw) = u.password() {
        let pw = urlencoding::decode(pw).ok()?;
        if u.username().is_empty() {
            command(&["AUTH", &pw]);
        } else {
            command(&["AUTH", u.username(), &pw]);
        }
    }
    command(&["INFO", "stats"]);
    s.write_all(&out).await.ok()?;
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(rest) = text.split("total_commands_processed:").nth(1)
                && let Some((value, _)) = rest.split_once("\r\n")
            {
                return value.trim().parse().ok();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), read).await.ok()?
}
