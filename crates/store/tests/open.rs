//! `open`: backend choice from the URL, migrations on reopen, and clear start-up errors.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use chrono::Utc;
use infinibay_store::{StoreError, VmStatus};

fn unavailable_message(
    result: Result<std::sync::Arc<dyn infinibay_store::Store>, StoreError>,
) -> String {
    match result {
        Err(StoreError::Unavailable(message)) => message,
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(store) => panic!("expected an error, opened {}", store.backend()),
    }
}

#[tokio::test]
async fn sqlite_open_says_when_the_directory_does_not_exist() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/missing/sub/store.db", dir.path().display());
    let message = unavailable_message(infinibay_store::open(&url).await);
    assert!(message.contains("does not exist"), "{message}");
    assert!(message.contains("missing/sub"), "{message}");
}

#[tokio::test]
async fn sqlite_open_says_when_the_path_is_not_a_writable_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().display());
    let message = unavailable_message(infinibay_store::open(&url).await);
    assert!(message.contains("cannot open SQLite database"), "{message}");
}

#[tokio::test]
async fn sqlite_reopen_keeps_data_and_reruns_migrations_harmlessly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}/store.db", dir.path().display());
    let store = infinibay_store::open(&url).await.expect("first open");
    assert_eq!(store.backend(), "sqlite");
    store.upsert_vm("vm-a", Utc::now()).await.expect("register");
    store
        .set_vm_status("vm-a", VmStatus::Online, None)
        .await
        .expect("status");
    drop(store);
    let store = infinibay_store::open(&url).await.expect("second open");
    let vm = store.get_vm("vm-a").await.expect("get").expect("kept");
    assert_eq!(vm.status, VmStatus::Online);
    store.ping().await.expect("ping");
}

#[tokio::test]
async fn sqlite_in_memory_database_works_for_one_process() {
    let store = infinibay_store::open("sqlite::memory:")
        .await
        .expect("open in memory");
    store.upsert_vm("vm-a", Utc::now()).await.expect("register");
    assert_eq!(store.list_vms().await.expect("list").len(), 1);
}

#[tokio::test]
async fn postgres_open_fails_fast_and_clearly_when_nothing_listens() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("postgres://infinibay:s3cret-pw@127.0.0.1:{port}/infinibay");
    let started = Instant::now();
    let message = unavailable_message(infinibay_store::open(&url).await);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        message.contains("cannot connect to PostgreSQL"),
        "{message}"
    );
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(
        !message.contains("s3cret-pw"),
        "the password leaked: {message}"
    );
}

#[tokio::test]
async fn postgres_open_migrates_a_fresh_database_and_reopens_it() {
    let url = support::fresh_pg_database().await;
    let store = infinibay_store::open(&url).await.expect("first open");
    assert_eq!(store.backend(), "postgres");
    store.upsert_vm("vm-a", Utc::now()).await.expect("register");
    drop(store);
    let store = infinibay_store::open(&url.replacen("postgres://", "postgresql://", 1))
        .await
        .expect("reopen");
    assert!(store.get_vm("vm-a").await.expect("get").is_some());
    store.ping().await.expect("ping");
}

#[tokio::test]
async fn open_rejects_an_unknown_scheme() {
    let message = unavailable_message(infinibay_store::open("mysql://localhost/x").await);
    assert!(
        message.contains("unsupported database URL scheme"),
        "{message}"
    );
}
