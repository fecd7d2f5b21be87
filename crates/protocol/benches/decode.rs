//! Decode + validate throughput of the guest→host path, on the three kinds of line the host
//! sees most: a ~1 KB `system_metrics`, a ~64 KB process/service/port-heavy sample (three v1
//! lines, the same content the original agent packs into one message), and the original agent's
//! own `metrics` message.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use infinibay_protocol::message::GuestMessage;
use infinibay_protocol::samples::{self, Jitter};
use infinibay_protocol::sanitize::{Limits, sanitize};
use infinibay_protocol::{GuestStreamDecoder, encode_line};
use std::hint::black_box;

fn line(message: &GuestMessage) -> Vec<u8> {
    encode_line(message).expect("sample messages serialize")
}

fn decode_and_validate(bytes: &[u8], limits: &Limits) -> usize {
    let mut decoder = GuestStreamDecoder::default();
    let mut count = 0;
    decoder.decode(bytes, |item| {
        if let Ok(mut message) = item {
            black_box(sanitize(&mut message, limits));
            count += 1;
        }
    });
    count
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let mut jitter = Jitter::new(7);

    let small = line(&GuestMessage::SystemMetrics(samples::small_metrics(
        &mut jitter,
        3600,
    )));
    let mut heavy = line(&GuestMessage::ProcessSnapshot(samples::typical_processes(
        &mut jitter,
        150,
    )));
    heavy.extend(line(&GuestMessage::ServiceInventory(
        samples::typical_services(100),
    )));
    heavy.extend(line(&GuestMessage::PortUsage(samples::typical_ports(40))));
    let legacy: serde_json::Value = serde_json::from_str(include_str!(
        "../tests/fixtures/legacy/metrics_full_redacted_pretty.json"
    ))
    .expect("fixture is JSON");
    let mut legacy = serde_json::to_vec(&legacy).expect("fixture re-serializes");
    legacy.push(b'\n');

    let mut group = c.benchmark_group("decode_validate");
    for (name, bytes) in [
        ("system_metrics_1k", &small),
        ("heavy_sample_64k", &heavy),
        ("legacy_metrics", &legacy),
    ] {
        eprintln!("{name}: {} bytes", bytes.len());
        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |b| {
            b.iter(|| decode_and_validate(black_box(bytes), &limits))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
