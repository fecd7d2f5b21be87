//! `open`: backend choice from the URL, migrations on reopen, and clear start-up errors.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use chrono::Utc;
use infinibay_store::{MetricSeries, StoreError, VmStatus, VmStatusUpdate};

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
    store
        .upsert_vms(&[("vm-a".into(), Utc::now())])
        .await
        .expect("register");
    let online = VmStatusUpdate {
        vm_id: "vm-a".into(),
        status: VmStatus::Online,
        last_seen: None,
    };
    assert_eq!(store.set_vm_statuses(&[online]).await.expect("status"), 1);
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
    store
        .upsert_vms(&[("vm-a".into(), Utc::now())])
        .await
        .expect("register");
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
    store
        .upsert_vms(&[("vm-a".into(), Utc::now())])
        .await
        .expect("register");
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

/// Applies only the migrations before 0003 (VM ids in sample rows) from a copy of the folder.
async fn migrator_before_vm_keys(backend: &str) -> (sqlx::migrate::Migrator, tempfile::TempDir) {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["0001_initial.sql", "0002_users.sql"] {
        std::fs::copy(source.join(name), dir.path().join(name)).expect("copy migration");
    }
    let migrator = sqlx::migrate::Migrator::new(dir.path())
        .await
        .expect("read migrations");
    (migrator, dir)
}

/// What a database written before 0003 holds: one raw sample now-ish, one minute rollup
/// three days ago. After opening (0003 runs) both must still be found under the VM.
async fn check_carried_over(url: &str) {
    let store = infinibay_store::open(url).await.expect("open migrates");
    let now = Utc::now();
    let MetricSeries {
        resolution,
        points: raw,
        ..
    } = store
        .metrics_series("vm-old", now - chrono::Duration::hours(1), now, 100)
        .await
        .expect("raw");
    assert_eq!(
        (resolution, raw.len()),
        (infinibay_store::Resolution::Raw, 1)
    );
    assert_eq!(raw[0].cpu_avg, 42.0);
    let three_days = now - chrono::Duration::days(3);
    let MetricSeries {
        resolution,
        points: minutes,
        ..
    } = store
        .metrics_series(
            "vm-old",
            three_days - chrono::Duration::hours(1),
            three_days + chrono::Duration::hours(1),
            1000,
        )
        .await
        .expect("minutes");
    assert_eq!(resolution, infinibay_store::Resolution::Minute);
    assert_eq!(minutes.len(), 1);
    assert_eq!(minutes[0].samples, 60);
    store
        .insert_samples(&[])
        .await
        .expect("inserting still works");
}

#[tokio::test]
async fn sqlite_migration_to_vm_keys_carries_existing_samples_and_rollups_over() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/old.db?mode=rwc", dir.path().display());
    let (migrator, _migrations) = migrator_before_vm_keys("sqlite").await;
    let pool = sqlx::SqlitePool::connect(&url).await.expect("connect");
    migrator.run(&pool).await.expect("migrate to 0002");
    let now = Utc::now().timestamp_millis();
    let minute = (now - 3 * 86_400_000) / 60_000 * 60_000;
    for sql in [
        format!("INSERT INTO vms (id, name, created_at) VALUES ('vm-old', 'vm-old', {now})"),
        format!(
            "INSERT INTO metric_samples VALUES ('vm-old', {}, NULL, 42.0, 1, 2, NULL, NULL, 0, 0, 0, 0, 0)",
            now - 60_000
        ),
        format!(
            "INSERT INTO metric_minute VALUES ('vm-old', {minute}, 60, 1.0, 0.5, 2.0, 10.0, 20, 0, 0, 0, 0)"
        ),
    ] {
        sqlx::query(&sql)
            .execute(&pool)
            .await
            .expect("seed old data");
    }
    pool.close().await;
    check_carried_over(&url).await;
}

#[tokio::test]
async fn postgres_migration_to_vm_keys_carries_existing_samples_and_rollups_over() {
    let url = support::fresh_pg_database().await;
    let (migrator, _migrations) = migrator_before_vm_keys("postgres").await;
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    migrator.run(&pool).await.expect("migrate to 0002");
    for sql in [
        "INSERT INTO vms (id, name, created_at) VALUES ('vm-old', 'vm-old', now())",
        "INSERT INTO metric_samples VALUES ('vm-old', now() - interval '1 minute', NULL, 42.0, \
         1, 2, NULL, NULL, 0, 0, 0, 0, 0)",
        "INSERT INTO metric_minute VALUES ('vm-old', date_trunc('minute', now() - interval '3 days'), \
         60, 1.0, 0.5, 2.0, 10.0, 20, 0, 0, 0, 0)",
    ] {
        sqlx::query(sql)
            .execute(&pool)
            .await
            .expect("seed old data");
    }
    pool.close().await;
    check_carried_over(&url).await;
}
