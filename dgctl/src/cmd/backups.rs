//! `dgctl backups` and `dgctl restore`. Downloads stream to a temporary file beside the target (never the
//! whole backup in memory), check the backup's recorded sha256, then rename. That sha256 covers the whole
//! *stored* stream (zstd-compressed, and encrypted when the job encrypts), so dgctl always downloads the
//! stored stream and hashes it; `--decompress` decompresses it locally on the way to disk (and checks the
//! decompressed size against the recorded raw size).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use dg_proto::v1::{self as pb, backup_service_client::BackupServiceClient};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::{
    App,
    error::{CliError, CliResult},
    output, progress, resolve, view,
};

/// Backup commands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List backups, newest first.
    List {
        /// Only this datasource's (name or id).
        #[arg(long)]
        datasource: Option<String>,
        /// Only this job's (name or id).
        #[arg(long)]
        job: Option<String>,
    },
    /// Show one backup with its copies. BACKUP is an id, a unique id prefix, `latest` or `latest:JOB`.
    Get {
        /// Backup.
        backup: String,
    },
    /// Verify every copy's checksums (no database touched).
    Verify {
        /// Backup.
        backup: String,
        /// Wait for the end (exit 5 if it fails).
        #[arg(long)]
        wait: bool,
    },
    /// Pin a backup: retention keeps it and delete refuses it.
    Pin {
        /// Backup.
        backup: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// Unpin a backup.
    Unpin {
        /// Backup.
        backup: String,
    },
    /// Delete a backup from every storage.
    Delete {
        /// Backup.
        backup: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Download a backup to a file, checking its sha256.
    Download {
        /// Backup.
        backup: String,
        /// Output file.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Write the decompressed dump (e.g. a pg_dump archive) instead of the stored zstd stream.
        #[arg(long)]
        decompress: bool,
    },
}

/// `dgctl restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Backup: an id, a unique id prefix, `latest` or `latest:JOB`.
    backup: String,
    /// Datasource to restore into (name or id; default the backup's own).
    #[arg(long = "to")]
    to: Option<String>,
    /// Database to restore into (default the datasource's).
    #[arg(long)]
    database: Option<String>,
    /// Create the database when it does not exist.
    #[arg(long, conflicts_with = "verify_only")]
    create: bool,
    /// Drop the objects the backup contains before restoring them.
    #[arg(long, conflicts_with = "verify_only")]
    drop_existing: bool,
    /// Restore into a temporary database and drop it (proves the backup restores; touches nothing).
    #[arg(long)]
    verify_only: bool,
    /// Wait for the end with a progress bar (exit 5 if it fails).
    #[arg(long)]
    wait: bool,
    /// Do not ask for confirmation (required without a terminal).
    #[arg(long)]
    yes: bool,
}

/// Runs a backup command.
pub async fn run(app: &App, cmd: Cmd) -> CliResult<()> {
    let s = app.session().await?;
    let mut c = BackupServiceClient::new(s.channel.clone());
    match cmd {
        Cmd::List { datasource, job } => {
            let ds = match datasource {
                Some(d) => resolve::datasource(&s, &d).await?.id,
                None => String::new(),
            };
            let job_id = match job {
                Some(j) => Some(resolve::job(&s, &j).await?.id),
                None => None,
            };
            let all: Vec<view::Backup> = resolve::backups(&s, &ds)
                .await?
                .into_iter()
                .filter(|b| job_id.as_ref().is_none_or(|j| &b.job_id == j))
                .map(Into::into)
                .collect();
            output::list(app.format, &all)
        }
        Cmd::Get { backup } => {
            let id = resolve::backup(&s, &backup).await?.id;
            let b = c.get_backup(s.req(pb::GetBackupRequest { id })).await?.into_inner();
            output::one(app.format, &view::Backup::from(b))
        }
        Cmd::Verify { backup, wait } => {
            let id = resolve::backup(&s, &backup).await?.id;
            let req = pb::VerifyBackupRequest { backup_id: id, read_rate_bytes_per_second: 0 };
            let ex = c.verify_backup(s.req(req)).await?.into_inner();
            if wait {
                let ex = super::executions::watch(&s, app.format, &ex.id).await?;
                super::executions::report(app.format, ex)
            } else {
                output::one(app.format, &view::Execution::from(ex))
            }
        }
        Cmd::Pin { backup, reason } => {
            let id = resolve::backup(&s, &backup).await?.id;
            let b = c.pin_backup(s.req(pb::PinBackupRequest { backup_id: id, reason })).await?.into_inner();
            output::one(app.format, &view::Backup::from(b))
        }
        Cmd::Unpin { backup } => {
            let id = resolve::backup(&s, &backup).await?.id;
            let b = c.unpin_backup(s.req(pb::UnpinBackupRequest { backup_id: id })).await?.into_inner();
            output::one(app.format, &view::Backup::from(b))
        }
        Cmd::Delete { backup, yes } => {
            let b = resolve::backup(&s, &backup).await?;
            super::confirm(&format!("Delete backup {} from every storage?", b.id), yes)?;
            let r = c.delete_backup(s.req(pb::DeleteBackupRequest { id: b.id.clone() })).await?.into_inner();
            output::done(
                app.format,
                &format!("deleted backup {} ({} objects)", b.id, r.deleted_objects),
                &serde_json::json!({"deleted": b.id, "deleted_objects": r.deleted_objects}),
            )
        }
        Cmd::Download { backup, file, decompress } => {
            let b = resolve::backup(&s, &backup).await?;
            let v = download(&s, app.format, &b, &file, decompress).await?;
            output::done(
                app.format,
                &format!("wrote {} ({}), sha256 verified", file.display(), output::bytes(v.bytes)),
                &v,
            )
        }
    }
}

#[derive(Serialize)]
struct DownloadView {
    backup_id: String,
    file: String,
    bytes: u64,
    decompressed: bool,
    /// The recorded sha256 of the stored stream, which the download matched.
    stored_sha256: String,
}

/// Streams the stored stream of `b` into `file` (decompressing on a blocking thread when asked).
async fn download(
    s: &crate::connect::Session,
    format: output::Format,
    b: &pb::Backup,
    file: &Path,
    decompress: bool,
) -> CliResult<DownloadView> {
    if decompress && !b.encryption_key_id.is_empty() {
        return Err(CliError::local(format!(
            "backup {} is encrypted with agent key \"{}\": only the stored stream can be downloaded",
            b.id, b.encryption_key_id
        )));
    }
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".dgctl-download-")
        .tempfile_in(dir)
        .map_err(|e| CliError::local(format!("{}: {e}", dir.display())))?;
    let mut c = BackupServiceClient::new(s.channel.clone());
    let mut stream =
        c.download_backup(s.req(pb::DownloadBackupRequest { id: b.id.clone(), decompress: false })).await?.into_inner();
    // Bounded: at most a few pieces wait for the disk.
    let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
    let writer = tokio::task::spawn_blocking(move || write_stream(tmp, rx, decompress));
    let bar = progress::bytes_bar(format, Some(b.stored_bytes), "download");
    let mut offset = 0u64;
    let received = async {
        while let Some(piece) = stream.message().await? {
            if piece.offset != offset {
                return Err(CliError::local(format!(
                    "download: piece at offset {} after {offset} bytes",
                    piece.offset
                )));
            }
            offset += piece.data.len() as u64;
            bar.set_position(offset);
            if tx.send(piece.data).await.is_err() {
                break;
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    bar.finish_and_clear();
    let written = writer.await.map_err(|e| CliError::local(format!("download writer: {e}")))?;
    received?;
    let (tmp, sha, bytes) = written?;
    if sha != b.sha256 {
        return Err(CliError::local(format!(
            "download of backup {}: sha256 {sha} does not match the recorded {} (file not written)",
            b.id, b.sha256
        )));
    }
    if decompress && b.raw_bytes > 0 && bytes != b.raw_bytes {
        return Err(CliError::local(format!(
            "download of backup {}: decompressed to {bytes} bytes, recorded {} (file not written)",
            b.id, b.raw_bytes
        )));
    }
    tmp.persist(file).map_err(|e| CliError::local(format!("{}: {e}", file.display())))?;
    Ok(DownloadView {
        backup_id: b.id.clone(),
        file: file.display().to_string(),
        bytes,
        decompressed: decompress,
        stored_sha256: sha,
    })
}

/// Hashes the stored stream and writes it (or its decompression) to `tmp`. Returns the file, the sha256 of
/// the stored stream and the bytes written.
fn write_stream(
    tmp: tempfile::NamedTempFile,
    mut rx: mpsc::Receiver<Vec<u8>>,
    decompress: bool,
) -> CliResult<(tempfile::NamedTempFile, String, u64)> {
    struct Counting<W> {
        inner: W,
        n: u64,
    }
    impl<W: std::io::Write> std::io::Write for Counting<W> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(b)?;
            self.n += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    let mut hasher = Sha256::new();
    let out = Counting { inner: std::io::BufWriter::new(tmp), n: 0 };
    let out = if decompress {
        let mut dec = zstd::stream::write::Decoder::new(out)?;
        while let Some(piece) = rx.blocking_recv() {
            hasher.update(&piece);
            dec.write_all(&piece)?;
        }
        // finish() refuses a stream cut mid-frame: a truncated backup never passes as a short file.
        dec.finish().map_err(|e| CliError::local(format!("the stored stream does not decompress: {e}")))?
    } else {
        let mut out = out;
        while let Some(piece) = rx.blocking_recv() {
            hasher.update(&piece);
            out.write_all(&piece)?;
        }
        out
    };
    let n = out.n;
    let tmp = out.inner.into_inner().map_err(|e| CliError::local(format!("write: {}", e.error())))?;
    tmp.as_file().sync_all()?;
    Ok((tmp, hex::encode(hasher.finalize()), n))
}

/// `dgctl restore BACKUP --to DATASOURCE …`.
pub async fn restore(app: &App, a: RestoreArgs) -> CliResult<()> {
    let s = app.session().await?;
    let b = resolve::backup(&s, &a.backup).await?;
    let target = match &a.to {
        Some(t) => resolve::datasource(&s, t).await?,
        None => resolve::datasource(&s, &b.datasource_id).await?,
    };
    let database = a.database.clone().unwrap_or_else(|| target.database.clone());
    if !a.verify_only {
        let effect = if a.drop_existing {
            "objects the backup contains are DROPPED and replaced"
        } else {
            "restored objects are added to what the database holds (existing ones conflict)"
        };
        let create = if a.create { ", created if missing" } else { "" };
        let when = view::ts(b.completed_at.as_ref()).unwrap_or_default();
        super::confirm(
            &format!(
                "Restore backup {} (completed {when}) into database \"{database}\"{create} on datasource \"{}\" \
                 ({}:{})? {effect}.",
                b.id, target.name, target.host, target.port
            ),
            a.yes,
        )?;
    }
    let req = pb::RestoreBackupRequest {
        backup_id: b.id.clone(),
        target_datasource_id: target.id.clone(),
        target_database: if a.verify_only { String::new() } else { database.clone() },
        create_database: a.create,
        drop_existing: a.drop_existing,
        confirm_target_database: if a.verify_only { String::new() } else { database },
        verification_mode: a.verify_only,
        ..Default::default()
    };
    let ex = BackupServiceClient::new(s.channel.clone()).restore_backup(s.req(req)).await?.into_inner();
    if a.wait {
        let ex = super::executions::watch(&s, app.format, &ex.id).await?;
        super::executions::report(app.format, ex)
    } else {
        output::one(app.format, &view::Execution::from(ex))
    }
}
