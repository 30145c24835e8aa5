//! Micro-benchmarks of the forwarding hot path: header-only framing of a
//! batch of DataRows (what the session loop does per server read).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn data_rows(n: usize) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    for i in 0..n {
        let v = format!("row {i} with some text payload");
        pgsift::protocol::messages::data_row_text(
            &mut buf,
            &[Some(i.to_string()), Some(v), None::<String>],
        );
    }
    buf.to_vec()
}

fn framing(c: &mut Criterion) {
    let batch = data_rows(100);
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Elements(100));
    g.bench_function("scan_100_datarows", |b| {
        b.iter(|| {
            let mut n = 0usize;
            let used = pgsift::protocol::frame::scan(black_box(&batch), 1 << 30, |tag, _| {
                n += (tag == b'D') as usize;
            })
            .unwrap();
            black_box((used, n))
        })
    });
    g.finish();
}

criterion_group!(benches, framing);
criterion_main!(benches);
