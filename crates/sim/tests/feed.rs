//! The ingest benchmark's drivers: the same bytes reach the consumer, all of them decode.

use std::sync::Arc;

use infinibay_sim::Profile;
use infinibay_sim::feed::{IngestStage, corpus, count_lines, ingest_pipeline, serve_corpus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_message_is_decoded_sanitised_and_published_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bytes = corpus(Profile::Small, 500, 3).expect("corpus builds");
    assert_eq!(count_lines(&bytes), 500);
    let per_message = bytes.len() / 500;
    assert!(
        (900..1300).contains(&per_message),
        "{per_message} bytes per message"
    );
    let socket = dir.path().join("feed.sock");
    let feeder = {
        let socket = socket.clone();
        let bytes = Arc::new(bytes);
        tokio::spawn(async move { serve_corpus(&socket, bytes, 20).await })
    };
    wait_for(&socket).await;
    let report = ingest_pipeline(&socket, IngestStage::Full)
        .await
        .expect("ingest runs");
    let fed = feeder.await.expect("feeder task").expect("feeder runs");
    assert_eq!(fed.messages, 10_000);
    assert_eq!(report.messages, 10_000);
    assert_eq!(report.bad_lines, 0);
    assert_eq!(report.bytes, fed.bytes);
    assert_eq!(
        report.delivered + report.lagged,
        10_000,
        "every message published"
    );
    assert!(report.cpu_secs > 0.0);
}

async fn wait_for(socket: &std::path::Path) {
    while !socket.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The floors are only floors if they do the work they are named after: framing rejects what is
/// not UTF-8, the syntax stage also rejects broken JSON, the typed stage also a wrong type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_floor_stage_rejects_exactly_what_its_check_covers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut bytes = corpus(Profile::Small, 20, 5).expect("corpus builds");
    bytes.extend_from_slice(b"{\"type\":\"system_metrics\",\"metrics\":{\"cpu\":{\"x\":[1,}}}\n");
    bytes.extend_from_slice(b"{\"type\":\"system_metrics\",\"metrics\":{\"cpu\":\"busy\"}}\n");
    bytes.extend_from_slice(b"{\"type\":\"pong\",\"note\":\"\xc3\x28\"}\n");
    let bytes = Arc::new(bytes);
    // (stage, accepted, rejected) per 23-line round
    let expected = [
        (IngestStage::Framing, 22, 1),
        (IngestStage::Syntax, 21, 2),
        (IngestStage::Typed, 20, 3),
        (IngestStage::Full, 20, 3),
    ];
    for (stage, accepted, rejected) in expected {
        let socket = dir.path().join(format!("{}.sock", stage.consumer_name()));
        let feeder = {
            let (socket, bytes) = (socket.clone(), bytes.clone());
            tokio::spawn(async move { serve_corpus(&socket, bytes, 3).await })
        };
        wait_for(&socket).await;
        let report = ingest_pipeline(&socket, stage).await.expect("ingest runs");
        feeder.await.expect("feeder task").expect("feeder runs");
        assert_eq!(
            (report.messages, report.bad_lines),
            (accepted * 3, rejected * 3),
            "{stage:?}"
        );
        let published = if stage == IngestStage::Full { 60 } else { 0 };
        assert_eq!(report.delivered + report.lagged, published, "{stage:?}");
    }
}

#[test]
fn typical_and_legacy_corpora_have_their_sizes() {
    let typical = corpus(Profile::Typical, 2, 1).expect("corpus builds");
    assert_eq!(count_lines(&typical), 8, "four lines per typical sample");
    assert!((48_000..90_000).contains(&(typical.len() / 2)));
    let legacy = corpus(Profile::Legacy, 2, 1).expect("corpus builds");
    assert_eq!(count_lines(&legacy), 2);
    for line in legacy.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let messages = infinibay_protocol::decode_guest_line(line).expect("legacy line decodes");
        assert!(
            messages.len() >= 4,
            "metrics splits into identification + 3 messages"
        );
    }
}
