//! How a cloud storage may be reached, through the public API: a plain `http://` GCS or Azure endpoint needs
//! `allow_http` (as S3 does), and the host's ambient cloud credentials need both the storage's
//! `ambient_credentials` and the controller's `allow_ambient_credentials`. Refusals are `INVALID_ARGUMENT`
//! naming the field, on create, update and unsaved test alike, and store nothing.

use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{Clients, Cluster, ClusterOptions, authed},
    suffix,
};
use tonic::{Code, Status};

/// One cloud configuration, turned into the create, update or test request variant.
#[derive(Clone)]
enum Cloud {
    S3(pb::S3StorageConfig),
    Gcs(pb::GcsStorageConfig),
    Azure(pb::AzureStorageConfig),
}

impl Cloud {
    fn create(self) -> pb::create_storage_request::Config {
        use pb::create_storage_request::Config as C;
        match self {
            Cloud::S3(s) => C::S3(s),
            Cloud::Gcs(g) => C::Gcs(g),
            Cloud::Azure(a) => C::Azure(a),
        }
    }

    fn update(self) -> pb::update_storage_request::Config {
        use pb::update_storage_request::Config as C;
        match self {
            Cloud::S3(s) => C::S3(s),
            Cloud::Gcs(g) => C::Gcs(g),
            Cloud::Azure(a) => C::Azure(a),
        }
    }
}

fn gcs(endpoint: &str, allow_http: bool, key: &str, ambient: bool) -> Cloud {
    Cloud::Gcs(pb::GcsStorageConfig {
        bucket: "backups".into(),
        endpoint: endpoint.into(),
        allow_http,
        service_account_key: key.into(),
        ambient_credentials: ambient,
        ..Default::default()
    })
}

fn azure(endpoint: &str, allow_http: bool, key: &str, ambient: bool) -> Cloud {
    Cloud::Azure(pb::AzureStorageConfig {
        account: "devstoreaccount1".into(),
        container: "backups".into(),
        endpoint: endpoint.into(),
        allow_http,
        access_key: key.into(),
        ambient_credentials: ambient,
        ..Default::default()
    })
}

fn s3(key: &str, ambient: bool) -> Cloud {
    Cloud::S3(pb::S3StorageConfig {
        endpoint: "https://s3.example.com".into(),
        bucket: "backups".into(),
        access_key_id: if key.is_empty() { String::new() } else { "AKID".into() },
        secret_access_key: key.into(),
        ambient_credentials: ambient,
        ..Default::default()
    })
}

async fn create(c: &mut Clients, cfg: &Cloud) -> Result<pb::Storage, Status> {
    let req = pb::CreateStorageRequest {
        name: format!("st-{}", suffix()),
        config: Some(cfg.clone().create()),
        ..Default::default()
    };
    Ok(c.storages.create_storage(authed(req, &c.token)).await?.into_inner())
}

async fn update(c: &mut Clients, id: &str, cfg: &Cloud) -> Result<pb::Storage, Status> {
    let req = pb::UpdateStorageRequest {
        id: id.into(),
        name: None,
        config: Some(cfg.clone().update()),
        ..Default::default()
    };
    Ok(c.storages.update_storage(authed(req, &c.token)).await?.into_inner())
}

async fn test_unsaved(c: &mut Clients, cfg: &Cloud) -> Result<pb::TestResult, Status> {
    let req =
        pb::CreateStorageRequest { name: String::new(), config: Some(cfg.clone().create()), ..Default::default() };
    let req = pb::TestStorageRequest { target: Some(pb::test_storage_request::Target::Config(req)) };
    Ok(c.storages.test_storage(authed(req, &c.token)).await?.into_inner())
}

async fn storage_count(c: &mut Clients) -> anyhow::Result<usize> {
    let req = pb::ListStoragesRequest { page_size: 500, ..Default::default() };
    Ok(c.storages.list_storages(authed(req, &c.token)).await?.into_inner().storages.len())
}

#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<T, Status>, field: &str, says: &str) {
    let e = r.expect_err(field);
    assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
    assert!(e.message().contains(field) && e.message().contains(says), "{field}: {}", e.message());
}

/// (allow_http, ambient_credentials) of the operator view.
fn view(s: &pb::Storage) -> (bool, bool) {
    match &s.config {
        Some(pb::storage::Config::S3(c)) => (c.allow_http, c.ambient_credentials),
        Some(pb::storage::Config::Gcs(c)) => (c.allow_http, c.ambient_credentials),
        Some(pb::storage::Config::Azure(c)) => (c.allow_http, c.ambient_credentials),
        other => panic!("not a cloud storage: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_gcs_and_azure_need_allow_http() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    type Make = fn(&str, bool, &str, bool) -> Cloud;
    let kinds: [(Make, &str, &str, &str); 2] = [
        (gcs, "gcs.endpoint", "gcs.service_account_key", "{\"disable_oauth\":true}"),
        (azure, "azure.endpoint", "azure.access_key", "a2V5"),
    ];
    for (make, field, secret_field, key) in kinds {
        let plain = "http://127.0.0.1:9";
        let before = storage_count(&mut c).await?;
        refused(create(&mut c, &make(plain, false, "", false)).await, field, "allow_http");
        refused(test_unsaved(&mut c, &make(plain, false, "", false)).await, field, "allow_http");
        assert_eq!(storage_count(&mut c).await?, before, "{field}: a refused create stores nothing");

        // With allow_http it is accepted and shown; dropping allow_http on update is refused again.
        let st = create(&mut c, &make(plain, true, "", false)).await?;
        assert_eq!(view(&st), (true, false), "{field}");
        refused(update(&mut c, &st.id, &make(plain, false, "", false)).await, field, "allow_http");
        assert_eq!(
            view(
                &c.storages
                    .get_storage(authed(pb::GetStorageRequest { id: st.id.clone() }, &c.token))
                    .await?
                    .into_inner()
            ),
            (true, false)
        );

        // An https endpoint needs no allow_http; turning plain HTTP on later needs the stored key again.
        let tls = create(&mut c, &make("https://storage.example.com", false, key, false)).await?;
        assert_eq!((view(&tls), tls.has_credentials), ((false, false), true), "{field}");
        refused(
            update(&mut c, &tls.id, &make("https://storage.example.com", true, "", false)).await,
            secret_field,
            "must be given again",
        );
        let on = update(&mut c, &tls.id, &make("https://storage.example.com", true, key, false)).await?;
        assert_eq!((view(&on), on.has_credentials), ((true, false), true), "{field}");
    }
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambient_credentials_need_the_controller_option() -> anyhow::Result<()> {
    type Make = fn(&str, bool) -> Cloud;
    let kinds: [(Make, &str, &str); 3] = [
        (s3, "s3.ambient_credentials", "s3-secret"),
        (|k, a| gcs("", false, k, a), "gcs.ambient_credentials", "{\"disable_oauth\":true}"),
        (|k, a| azure("", false, k, a), "azure.ambient_credentials", "a2V5"),
    ];

    // A controller without allow_ambient_credentials refuses them, on create, test and update.
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    for (make, field, key) in kinds {
        let keyed = create(&mut c, &make(key, false)).await?;
        let before = storage_count(&mut c).await?;
        refused(create(&mut c, &make("", true)).await, field, "allow_ambient_credentials");
        refused(test_unsaved(&mut c, &make("", true)).await, field, "allow_ambient_credentials");
        refused(update(&mut c, &keyed.id, &make("", true)).await, field, "allow_ambient_credentials");
        refused(create(&mut c, &make(key, true)).await, field, "together with keys");
        assert_eq!(storage_count(&mut c).await?, before, "{field}: refused requests store nothing");
        let kept = c.storages.get_storage(authed(pb::GetStorageRequest { id: keyed.id.clone() }, &c.token)).await?;
        let kept = kept.into_inner();
        assert_eq!((view(&kept), kept.has_credentials), ((false, false), true), "{field}: the update changed nothing");
        // A keyless storage without ambient credentials is fine: it is accessed anonymously.
        assert_eq!(view(&create(&mut c, &make("", false)).await?), (false, false));
    }
    cluster.stop().await;

    // A controller that allows them accepts them, shows them, and drops stored keys for them.
    let mut cluster =
        Cluster::start_with(ClusterOptions { allow_ambient_credentials: true, ..ClusterOptions::default() }).await?;
    let mut c = cluster.clients().await?;
    for (make, field, key) in kinds {
        let st = create(&mut c, &make("", true)).await?;
        assert_eq!((view(&st), st.has_credentials), ((false, true), false), "{field}");
        refused(create(&mut c, &make(key, true)).await, field, "together with keys");
        let keyed = create(&mut c, &make(key, false)).await?;
        let moved = update(&mut c, &keyed.id, &make("", true)).await?;
        assert_eq!((view(&moved), moved.has_credentials), ((false, true), false), "{field}");
    }
    cluster.stop().await;
    Ok(())
}
