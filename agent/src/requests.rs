//! Short operations the controller asks of the agent over the session (connection and storage tests, object
//! reads for downloads, object deletes for retention and backup deletion). Each is answered by one
//! `AgentResponse` carrying the request id; a read first streams `ObjectData` pieces of at most 1 MiB.

use std::time::Duration;

use dg_proto::v1::{self as pb, agent_message::Kind, agent_request, agent_response};
use futures::StreamExt;
use object_store::{ObjectStoreExt, path::Path as ObjPath};
use tokio::sync::mpsc;

use crate::{context::AgentContext, engine, storage};

const PIECE: usize = 1024 * 1024;

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

/// Handles one request and sends its answer (and data) on `tx`.
pub async fn handle(req: pb::AgentRequest, tx: mpsc::Sender<pb::AgentMessage>, ctx: AgentContext) {
    let id = req.request_id.clone();
    let (kind, error) = match req.kind {
        Some(agent_request::Kind::TestDatabase(t)) => {
            let r = match t.target {
                Some(target) => match engine::test_connection(&target, &target.database).await {
                    Ok(info) => pb::TestResult {
                        ok: true,
                        latency: Some(duration(info.latency)),
                        error: String::new(),
                        server_version: info.version,
                        checked_at: Some(now()),
                    },
                    Err(e) => failed_test(e.to_string()),
                },
                None => failed_test("no target".into()),
            };
            (Some(agent_response::Kind::Test(r)), String::new())
        }
        Some(agent_request::Kind::TestStorage(t)) => {
            let r = match t.storage.as_ref().map(|t| storage::open(t, &ctx)) {
                Some(Ok(s)) => {
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
                Some(Err(e)) => failed_test(e.to_string()),
                None => failed_test("no storage".into()),
            };
            (Some(agent_response::Kind::Test(r)), String::new())
        }
        Some(agent_request::Kind::ReadObject(r)) => match read(&id, r, &tx, &ctx).await {
            Ok(n) => (Some(agent_response::Kind::ReadBytes(n)), String::new()),
            Err(e) => (None, e),
        },
        Some(agent_request::Kind::DeleteObjects(d)) => match d.storage.as_ref().map(|t| storage::open(t, &ctx)) {
            Some(Ok(s)) => {
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
                (Some(agent_response::Kind::Deleted(n)), error)
            }
            Some(Err(e)) => (None, e.to_string()),
            None => (None, "no storage".into()),
        },
        None => (None, "unknown request".into()),
    };
    let _ = tx
        .send(pb::AgentMessage { kind: Some(Kind::Response(pb::AgentResponse { request_id: id, error, kind })) })
        .await;
}

async fn read(
    id: &str,
    r: pb::ReadObject,
    tx: &mpsc::Sender<pb::AgentMessage>,
    ctx: &AgentContext,
) -> Result<u64, String> {
    let s = r.storage.as_ref().map(|t| storage::open(t, ctx)).ok_or("no storage")?.map_err(|e| e.to_string())?;
    let mut stream = s.store.get(&ObjPath::from(r.key.as_str())).await.map_err(|e| e.to_string())?.into_stream();
    let mut sent = 0u64;
    while let Some(part) = stream.next().await {
        let part = part.map_err(|e| e.to_string())?;
        for piece in part.chunks(PIECE) {
            let msg = pb::ObjectData { request_id: id.to_owned(), data: piece.to_vec() };
            tx.send(pb::AgentMessage { kind: Some(Kind::ObjectData(msg)) }).await.map_err(|_| "session closed")?;
            sent += piece.len() as u64;
        }
    }
    Ok(sent)
}
