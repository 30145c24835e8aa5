//! Micro-benchmarks of statement analysis and N+1 detection, the per-statement
//! work pgsift adds to the forwarding path:
//! - an already-seen text (exact-text memo hit),
//! - an already-seen shape with new inlined literal values (what psycopg2
//!   sends on every iteration of an N+1 loop: shape scan + memo hit),
//! - a never-seen ORM-style statement (libpg_query normalize, fingerprint,
//!   summary),
//! - the detector's work per statement.

use criterion::{criterion_group, criterion_main, Criterion};
use pgsift::nplus1::{Detector, Execution};
use pgsift::sql::Analyzer;
use std::hint::black_box;
use std::time::Duration;

const ORM: &str =
    "SELECT users.id AS users_id, users.name AS users_name, users.email AS users_email \
                   FROM users WHERE users.id = 42";

fn analysis(c: &mut Criterion) {
    let a = Analyzer::new(1_000_000);
    a.analyze(ORM);
    c.bench_function("analyze/seen_text", |b| {
        b.iter(|| black_box(a.analyze(black_box(ORM))))
    });

    let texts: Vec<String> = (0..100_000)
        .map(|i| format!("SELECT users.id AS users_id, users.name AS users_name, users.email AS users_email FROM users WHERE users.id = {i}"))
        .collect();
    let mut i = 0;
    c.bench_function("analyze/seen_shape_new_literals", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            black_box(a.analyze(&texts[i]))
        })
    });

    let mut n = 0u64;
    c.bench_function("analyze/never_seen_orm_statement", |b| {
        b.iter(|| {
            n += 1;
            // a new column alias makes a new shape every time
            let sql = format!(
                "SELECT posts.id AS posts_id, posts.title AS posts_title_{n}, posts.created_at AS posts_created_at \
                 FROM posts JOIN users ON users.id = posts.user_id WHERE posts.user_id = 7 ORDER BY posts.created_at DESC LIMIT 20"
            );
            black_box(a.analyze(&sql))
        })
    });
}

fn detector(c: &mut Criterion) {
    let a = Analyzer::new(1000);
    let lookups: Vec<_> = (0..64)
        .map(|i| a.analyze(&format!("SELECT * FROM users WHERE id = {i}")))
        .collect();
    let parent = a.analyze("SELECT * FROM posts ORDER BY created_at DESC LIMIT 20");
    let mut d = Detector::new(5, Duration::from_millis(100));
    let mut t = pgsift::clock::Mono::now();
    let mut k = 0usize;
    c.bench_function("detector/per_statement", |b| {
        b.iter(|| {
            k += 1;
            t += Duration::from_micros(50);
            let x = if k % 21 == 0 {
                &parent
            } else {
                &lookups[k % 64]
            };
            let e = Execution {
                analysis: x.analysis.clone(),
                values: x.values,
                example: Some("SELECT * FROM users WHERE id = 1".into()),
                start: t,
                duration: Duration::from_micros(30),
            };
            black_box(d.observe(e))
        })
    });
}

criterion_group!(benches, analysis, detector);
criterion_main!(benches);
