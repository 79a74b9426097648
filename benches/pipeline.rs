//! Criterion benchmarks of the CPU stages. `ingest_prepare`: gzip-free NDJSON
//! bodies of 100 realistic records through decode + Hex.Audit validation +
//! serialisation for the journal — the part of ingest that is not HTTP or SQLite.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[path = "../examples/common/records.rs"]
mod records;

fn ingest_prepare(c: &mut Criterion) {
    let body = records::ndjson_batch(0, 100);
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(100));
    g.bench_function("prepare_ndjson_100", |b| {
        b.iter(|| {
            let p = hexwatch::ingest::prepare(body.as_bytes(), None, 16 << 20, "hex").unwrap();
            assert_eq!(p.batch.entries.len(), 100);
            p
        })
    });
    g.finish();
}

criterion_group!(benches, ingest_prepare);
criterion_main!(benches);
