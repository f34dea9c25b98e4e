//! Short operations the controller asks of the agent over the session (connection and storage tests, object
//! reads for downloads, object deletes for retention and backup deletion). Each is answered by one
//! `AgentResponse` carrying the request id; a read first sends the object in pieces of at most 1 MiB on a
//! `SendObject` call of its own (bounded: at most [`UPLOAD_QUEUE`] pieces wait for the call), so its bytes
//! never queue in front of the session's heartbeats and reports, and a slow reader throttles only that call.
//!
//! Part of the connection edge: the request and response envelopes are `pb` messages, but the database and
//! storage targets they carry are converted into the protocol model (`TryFrom`) before any engine or storage
//! code sees them; a target that does not convert is answered with the conversion error in the response's
//! `error`. Called by the session, one spawned task per request.

use std::time::Duration;

use futures::StreamExt;
use object_store::{ObjectStoreExt, path::Path as ObjPath};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use dg_common::protocol::{DatabaseTarget, ProtocolError, StorageTarget};
use dg_proto::v1::{
    self as pb, agent_message::Kind, agent_request, agent_response,
    agent_session_service_client::AgentSessionServiceClient,
};

use crate::{
    context::AgentContext,
    engine,
    storage::{self, OpenStorage},
};

const PIECE: usize = 1024 * 1024;
/// Pieces of an object read waiting for its `SendObject` call.
pub const UPLOAD_QUEUE: usize = 2;

/// The client of the controller's agent port that object uploads use.
pub type Uploads = AgentSessionServiceClient<Channel>;

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(0),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn now() -> prost_types::Timestamp {
    let n = chrono::Utc::now();
    prost_types::Timestamp { seconds: n.timestamp(), nanos: i32::try_from(n.timestamp_subsec_nanos()).unwrap_or(0) }
}

fn failed_test(error: String) -> pb::TestResult {
    pb::TestResult { ok: false, latency: None, error, server_version: String::new(), checked_at: Some(now()) }
}

/// The model value of a request's required target field, or the conversion error naming the field.
fn convert<W, T>(wire: Option<W>, field: &str) -> Result<T, String>
where
    T: TryFrom<W, Error = ProtocolError>,
{
    let wire = wire.ok_or_else(|| ProtocolError::new(field, "is required").to_string())?;
    T::try_from(wire).map_err(|e| e.within(field).to_string())
}

/// Converts a request's storage target and opens it.
fn open_storage(wire: Option<pb::StorageTarget>, ctx: &AgentContext) -> Result<OpenStorage, String> {
    let target: StorageTarget = convert(wire, "storage")?;
    storage::open(&target, ctx).map_err(|e| e.to_string())
}

/// Opens a storage and writes, reads back and deletes a probe object. A storage that does not open is a
/// failed test, not a request error.
async fn test_storage(target: &StorageTarget, ctx: &AgentContext) -> pb::TestResult {
    let s = match storage::open(target, ctx) {
        Ok(s) => s,
        Err(e) => return failed_test(e.to_string()),
    };
    let key = format!(".dataguardian-probe/{}", uuid::Uuid::new_v4());
    match dg_common::store::probe(s.store.as_ref(), &key).await {
        Ok(d) => pb::TestResult {
            ok: true,
            latency: Some(duration(d)),
            error: String::new(),
            server_version: String::new(),
            checked_at: Some(now()),
        },
        Err(e) => failed_test(e.0),
    }
}

/// Handles one request and sends its answer on `tx` (a read's bytes on `uploads` first).
pub async fn handle(req: pb::AgentRequest, tx: mpsc::Sender<pb::AgentMessage>, uploads: Uploads, ctx: AgentContext) {
    let id = req.request_id.clone();
    let (kind, error) = match req.kind {
        Some(agent_request::Kind::TestDatabase(t)) => match convert::<_, DatabaseTarget>(t.target, "target") {
            Ok(target) => {
                let r = match engine::test_connection(&target, &target.database).await {
                    Ok(info) => pb::TestResult {
                        ok: true,
                        latency: Some(duration(info.latency)),
                        error: String::new(),
                        server_version: info.version,
                        checked_at: Some(now()),
                    },
                    Err(e) => failed_test(e.to_string()),
                };
                (Some(agent_response::Kind::Test(r)), String::new())
            }
            Err(e) => (None, e),
        },
        Some(agent_request::Kind::TestStorage(t)) => match convert::<_, StorageTarget>(t.storage, "storage") {
            Ok(target) => (Some(agent_response::Kind::Test(test_storage(&target, &ctx).await)), String::new()),
            Err(e) => (None, e),
        },
        Some(agent_request::Kind::ReadObject(r)) => match read(&id, r, uploads, &ctx).await {
            Ok(n) => (Some(agent_response::Kind::ReadBytes(n)), String::new()),
            Err(e) => (None, e),
        },
        Some(agent_request::Kind::DeleteObjects(d)) => match open_storage(d.storage, &ctx) {
            Ok(s) => {
                let mut n = 0u32;
                let mut error = String::new();
                for key in &d.keys {
                    match s.store.delete(&ObjPath::from(key.as_str())).await {
                        Ok(()) => n += 1,
                        Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => {
                            error = format!("delete {key}: {e}");
                            break;
                        }
                    }
                }
                if error.is_empty() && !d.prefix.is_empty() {
                    match delete_below(&s, &d.prefix).await {
                        Ok(m) => n += m,
                        Err(e) => error = e,
                    }
                }
                (Some(agent_response::Kind::Deleted(n)), error)
            }
            Err(e) => (None, e),
        },
        None => (None, "unknown request".into()),
    };
    let _ = tx
        .send(pb::AgentMessage {
            kind: Some(Kind::Response(pb::AgentResponse { request_id: id, error, kind })),
            report_seq: 0,
        })
        .await;
}

/// Deletes everything below `prefix` (an attempt's, built from ids: relative, no `..`) in a storage.
async fn delete_below(s: &crate::storage::OpenStorage, prefix: &str) -> Result<u32, String> {
    if prefix.starts_with('/') || prefix.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return Err("prefix: must be a relative object key prefix".into());
    }
    dg_common::store::delete_prefix(s.store.as_ref(), prefix).await.map_err(|e| e.0)
}

/// Sends one object on a `SendObject` call: the request id first, then the pieces. A storage error mid-way
/// drops the call (the controller sees it reset, not ended); a call the controller ends early (it refused the
/// upload, or the reader went away) stops the read with the controller's reason.
async fn read(id: &str, r: pb::ReadObject, mut uploads: Uploads, ctx: &AgentContext) -> Result<u64, String> {
    let s = open_storage(r.storage, ctx)?;
    let mut stream = s.store.get(&ObjPath::from(r.key.as_str())).await.map_err(|e| e.to_string())?.into_stream();
    let (pieces, rx) = mpsc::channel::<pb::ObjectChunk>(UPLOAD_QUEUE);
    let request_id = id.to_owned();
    let feed = async move {
        let closed = || "the object upload closed".to_owned();
        pieces.send(pb::ObjectChunk { request_id, data: Vec::new() }).await.map_err(|_| closed())?;
        let mut sent = 0u64;
        while let Some(part) = stream.next().await {
            let part = part.map_err(|e| e.to_string())?;
            for piece in part.chunks(PIECE) {
                pieces
                    .send(pb::ObjectChunk { request_id: String::new(), data: piece.to_vec() })
                    .await
                    .map_err(|_| closed())?;
                sent += piece.len() as u64;
            }
        }
        Ok::<u64, String>(sent)
    };
    let call = uploads.send_object(ReceiverStream::new(rx));
    tokio::pin!(call);
    let sent = tokio::select! {
        fed = feed => fed?,
        early = &mut call => {
            return Err(match early {
                Err(s) => format!("object upload refused: {}", s.message()),
                Ok(_) => "the controller ended the object upload early".to_owned(),
            });
        }
    };
    let received = call.await.map_err(|s| format!("object upload failed: {}", s.message()))?.into_inner();
    if received.received_bytes != sent {
        return Err(format!("the controller received {} of {sent} bytes", received.received_bytes));
    }
    Ok(sent)
}
