//! The ingest benchmark's drivers: the same bytes reach the consumer, all of them decode.

use std::sync::Arc;

use infinibay_sim::Profile;
use infinibay_sim::feed::{corpus, count_lines, ingest_pipeline, serve_corpus};

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
    while !socket.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let report = ingest_pipeline(&socket).await.expect("ingest runs");
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
