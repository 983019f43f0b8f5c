//! The per-frame cost of the Media Streams codec: writing one 20 ms media message, and parsing one 40 ms
//! Pipecat media message. Before measuring, it checks the allocation claims with a counting allocator:
//! writing media allocates nothing once the buffer fits, parsing allocates only the decoded audio.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fairvox::proto::media_streams::{StreamWriter, parse_agent_message, stream_sid};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_per_call(n: u64, mut f: impl FnMut()) -> f64 {
    let before = ALLOCATIONS.load(Relaxed);
    for _ in 0..n {
        f();
    }
    (ALLOCATIONS.load(Relaxed) - before) as f64 / n as f64
}

fn pipecat_media(sid: &str) -> String {
    // Python's json.dumps layout, 40 ms of µ-law.
    let payload: Vec<u8> = (0..320u32).map(|i| (i * 7) as u8).collect();
    format!(r#"{{"event": "media", "streamSid": "{sid}", "media": {{"payload": "{}"}}}}"#, STANDARD.encode(payload))
}

fn bench(c: &mut Criterion) {
    let sid = stream_sid(0x1234_5678_9abc_def0);
    let frame: [u8; 160] = std::array::from_fn(|i| i as u8);
    let mut writer = StreamWriter::new(&sid);
    let mut out = String::with_capacity(writer.media_len_hint(frame.len()));
    let mut ts = 0u64;

    let write_allocs = allocations_per_call(10_000, || {
        ts += 20;
        writer.media(ts, black_box(&frame), &mut out);
    });
    assert_eq!(write_allocs, 0.0, "StreamWriter::media allocated");
    let text = pipecat_media(&sid);
    let parse_allocs = allocations_per_call(10_000, || {
        black_box(parse_agent_message(black_box(&text)).unwrap());
    });
    assert!(parse_allocs <= 1.0, "parse_agent_message made {parse_allocs} allocations per media message");
    eprintln!("allocations per call: StreamWriter::media {write_allocs}, parse_agent_message {parse_allocs}");

    let mut group = c.benchmark_group("media_streams");
    group.throughput(Throughput::Elements(1));
    group.bench_function("write_media_160", |b| {
        b.iter(|| {
            ts += 20;
            writer.media(ts, black_box(&frame), &mut out);
            black_box(out.len())
        })
    });
    group.bench_function("parse_pipecat_media_320", |b| b.iter(|| parse_agent_message(black_box(&text))));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
