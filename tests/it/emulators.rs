//! Our object store builders (`dg_common::store`) against real S3 (moto), Azure Blob (Azurite) and GCS
//! (fake-gcs-server) servers, each on its own loopback port: the storage probe, a 3 MiB put/get/range/head,
//! listing with and without delimiter, delete, key prefixes, missing buckets, and refused credentials where the
//! server checks them. fake-gcs-server cannot take object_store's uploads, so GCS objects are seeded through its
//! JSON API and the GCS tests cover reads, listings and deletes.

use std::time::Instant;

use dg_common::store::{StoreConfig, open, probe};
use dg_tests::{
    emulators::{Azurite, GcsEmulator, S3Server},
    suffix,
};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path};

const BIG: usize = 3 * 1024 * 1024;

/// 3 MiB that no off-by-one or truncation can pass for the original.
fn big_payload() -> Vec<u8> {
    (0..BIG as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

async fn keys(store: &dyn ObjectStore, prefix: Option<&str>) -> anyhow::Result<Vec<String>> {
    let prefix = prefix.map(Path::from);
    let mut keys: Vec<String> = store.list(prefix.as_ref()).map_ok(|m| m.location.to_string()).try_collect().await?;
    keys.sort();
    Ok(keys)
}

/// The objects every test stores, relative to the store's prefix: a 3 MiB one and two small ones.
fn objects() -> Vec<(&'static str, Vec<u8>)> {
    vec![("dir/sub/object.bin", big_payload()), ("dir/small.txt", b"small".to_vec()), ("elsewhere.txt", b"x".to_vec())]
}

/// The storage probe and the puts of [`objects`] through `store`; the probe must leave nothing behind.
async fn probe_and_put(store: &dyn ObjectStore, raw: &dyn ObjectStore) -> anyhow::Result<()> {
    probe(store, "probe/key").await?;
    assert!(keys(raw, None).await?.is_empty(), "the probe object must be deleted");
    for (key, data) in objects() {
        store.put(&Path::from(key), PutPayload::from(data)).await?;
    }
    Ok(())
}

/// Reads, listings and deletes of [`objects`] through `store` (which has `prefix`), checked from `raw` (same
/// bucket, no prefix).
async fn read_list_delete(store: &dyn ObjectStore, raw: &dyn ObjectStore, prefix: &str) -> anyhow::Result<()> {
    let data = big_payload();
    let big = Path::from("dir/sub/object.bin");
    let back = store.get(&big).await?.bytes().await?;
    assert_eq!(back.len(), BIG);
    assert!(back.as_ref() == data.as_slice(), "3 MiB object read back different bytes");
    let range = store.get_range(&big, 1_000_000..1_000_100).await?;
    assert_eq!(range.as_ref(), &data[1_000_000..1_000_100]);
    assert_eq!(store.head(&big).await?.size, BIG as u64);
    assert_eq!(store.get(&Path::from("dir/small.txt")).await?.bytes().await?.as_ref(), b"small");

    assert_eq!(keys(store, Some("dir")).await?, ["dir/small.txt", "dir/sub/object.bin"]);
    let listing = store.list_with_delimiter(Some(&Path::from("dir"))).await?;
    let prefixes: Vec<String> = listing.common_prefixes.iter().map(ToString::to_string).collect();
    let objects: Vec<String> = listing.objects.iter().map(|m| m.location.to_string()).collect();
    assert_eq!(prefixes, ["dir/sub"]);
    assert_eq!(objects, ["dir/small.txt"]);

    // The prefix really is where the bytes are.
    assert_eq!(
        keys(raw, None).await?,
        [format!("{prefix}/dir/small.txt"), format!("{prefix}/dir/sub/object.bin"), format!("{prefix}/elsewhere.txt")]
    );
    assert_eq!(raw.head(&Path::from(format!("{prefix}/dir/sub/object.bin"))).await?.size, BIG as u64);

    store.delete(&big).await?;
    let gone = store.get(&big).await;
    assert!(matches!(gone, Err(object_store::Error::NotFound { .. })), "deleted object still readable: {gone:?}");
    assert_eq!(keys(store, None).await?, ["dir/small.txt", "elsewhere.txt"]);
    Ok(())
}

/// The whole exercise through `open(cfg)` (which has `prefix`), checked through `open(raw)`.
async fn exercise(cfg: &StoreConfig, raw: &StoreConfig, prefix: &str) -> anyhow::Result<()> {
    let (store, raw) = (open(cfg)?, open(raw)?);
    probe_and_put(store.as_ref(), raw.as_ref()).await?;
    read_list_delete(store.as_ref(), raw.as_ref(), prefix).await
}

/// A store for a bucket that does not exist opens (builders do no I/O) but fails the probe.
async fn missing_bucket_fails(cfg: &StoreConfig) -> anyhow::Result<()> {
    let store = open(cfg)?;
    let err = probe(store.as_ref(), "probe/key").await.expect_err("probe of a missing bucket must fail");
    assert!(err.0.starts_with("write:"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_moto_roundtrip() -> anyhow::Result<()> {
    dg_tests::init_logging();
    let t = Instant::now();
    let s3 = S3Server::start().await?;
    let started = t.elapsed();
    let bucket = format!("dg-{}", suffix());
    s3.create_bucket(&bucket).await?;
    exercise(&s3.config(&bucket, "backups/s3"), &s3.config(&bucket, ""), "backups/s3").await?;
    missing_bucket_fails(&s3.config("dg-no-such-bucket", "")).await?;
    eprintln!("moto: started in {started:?}, whole test {:?}", t.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_moto_refuses_wrong_keys_when_checking_signatures() -> anyhow::Result<()> {
    dg_tests::init_logging();
    let mut s3 = S3Server::start().await?;
    let bucket = format!("dg-{}", suffix());
    s3.create_bucket(&bucket).await?;
    s3.require_signatures().await?;
    // Bucket creation still works (checks paused around it), and the real key works on both buckets.
    let second = format!("dg-{}", suffix());
    s3.create_bucket(&second).await?;
    for b in [&bucket, &second] {
        probe(open(&s3.config(b, "p"))?.as_ref(), "probe/key").await?;
    }

    let key_id = s3.access_key_id().to_owned();
    for (what, cfg) in [
        ("wrong secret", s3.config_with_keys(&bucket, "", &key_id, "not-the-secret")),
        ("unknown key id", s3.config_with_keys(&bucket, "", "AKIAUNKNOWNUNKNOWN00", "whatever")),
    ] {
        let err = probe(open(&cfg)?.as_ref(), "probe/key").await.expect_err(what);
        assert!(err.0.starts_with("write:") && err.0.contains("403"), "{what}: {err}");
    }
    // Nothing was written by the refused requests.
    assert!(keys(open(&s3.config(&bucket, ""))?.as_ref(), None).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_azurite_roundtrip() -> anyhow::Result<()> {
    dg_tests::init_logging();
    let t = Instant::now();
    let az = Azurite::start().await?;
    let started = t.elapsed();
    let container = format!("dg-{}", suffix());
    az.create_container(&container).await?;
    exercise(&az.config(&container, "backups/az"), &az.config(&container, ""), "backups/az").await?;
    missing_bucket_fails(&az.config("dg-no-such-container", "")).await?;
    eprintln!("azurite: started in {started:?}, whole test {:?}", t.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_azurite_refuses_wrong_key() -> anyhow::Result<()> {
    use base64::Engine;
    dg_tests::init_logging();
    let az = Azurite::start().await?;
    let container = format!("dg-{}", suffix());
    az.create_container(&container).await?;
    let wrong = base64::engine::general_purpose::STANDARD.encode([7u8; 64]);
    let err = probe(open(&az.config_with_key(&container, "", &wrong))?.as_ref(), "probe/key")
        .await
        .expect_err("a wrong account key must be refused");
    assert!(err.0.starts_with("write:") && err.0.contains("403"), "{err}");
    // The right key works, and the refused write left nothing behind.
    let good = open(&az.config(&container, ""))?;
    assert!(keys(good.as_ref(), None).await?.is_empty());
    probe(good.as_ref(), "probe/key").await?;
    Ok(())
}

/// fake-gcs-server lacks the XML API simple upload that object_store's `put` (and so the storage probe) uses:
/// objects are seeded through its JSON API, and object_store does the reads, range reads, listings and deletes
/// (what the controller does with a GCS store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_fake_server_reads_lists_deletes() -> anyhow::Result<()> {
    dg_tests::init_logging();
    let t = Instant::now();
    let gcs = GcsEmulator::start().await?;
    let started = t.elapsed();
    let bucket = format!("dg-{}", suffix());
    gcs.create_bucket(&bucket).await?;
    for (key, data) in objects() {
        gcs.upload(&bucket, &format!("backups/gcs/{key}"), &data).await?;
    }
    let (store, raw) = (open(&gcs.config(&bucket, "backups/gcs"))?, open(&gcs.config(&bucket, ""))?);
    read_list_delete(store.as_ref(), raw.as_ref(), "backups/gcs").await?;

    // Without a key the store sends no token and fetches none (no metadata server, no default credentials).
    let anonymous = open(&gcs.config_with_key(&bucket, "", ""))?;
    assert_eq!(keys(anonymous.as_ref(), None).await?, keys(raw.as_ref(), None).await?);
    gcs.upload(&bucket, "anon/k", b"v").await?;
    assert_eq!(anonymous.get(&Path::from("anon/k")).await?.bytes().await?.as_ref(), b"v");
    anonymous.delete(&Path::from("anon/k")).await?;

    let missing = open(&gcs.config("dg-no-such-bucket", ""))?;
    assert!(keys(missing.as_ref(), None).await.is_err(), "listing a missing bucket must fail");
    eprintln!("fake-gcs-server: started in {started:?}, whole test {:?}", t.elapsed());
    Ok(())
}

/// A real (RSA) service account key goes through object_store's self-signed JWT path, which needs no token
/// endpoint: the store works against the emulator without any other network access.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_with_a_real_service_account_key() -> anyhow::Result<()> {
    dg_tests::init_logging();
    let gcs = GcsEmulator::start().await?;
    let bucket = format!("dg-{}", suffix());
    gcs.create_bucket(&bucket).await?;
    gcs.upload(&bucket, "sa/k", b"v").await?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?;
    let sa = serde_json::json!({
        "type": "service_account",
        "client_email": "dg-test@dg-test.iam.gserviceaccount.com",
        "private_key_id": "0123456789abcdef",
        "private_key": key.serialize_pem(),
    })
    .to_string();
    let store = open(&gcs.config_with_key(&bucket, "sa", &sa))?;
    assert_eq!(keys(store.as_ref(), None).await?, ["k"]);
    assert_eq!(store.get(&Path::from("k")).await?.bytes().await?.as_ref(), b"v");
    store.delete(&Path::from("k")).await?;
    assert!(keys(store.as_ref(), None).await?.is_empty());

    // A key that is not a key is refused when the store is opened.
    let bad = serde_json::json!({
        "client_email": "x@y", "private_key_id": "1", "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    })
    .to_string();
    assert!(open(&gcs.config_with_key(&bucket, "", &bad)).is_err(), "a malformed private key must be refused");
    Ok(())
}
