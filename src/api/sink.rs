//! Call records into the store. The media core hands each finished call's record to a [`CallRecordSink`] from its
//! call task; [`StoreSink`] passes it to the next sink (log and JSONL file) and queues it, without blocking, on a
//! bounded channel to one writer thread, which records it with `Store::record_call` (call row and usage in one
//! transaction) in the name of `system:call-records`. A full queue drops the record from the store and counts it
//! (the JSONL file still has it); a write that fails is retried, then counted as failed and logged with its call
//! id. Every outcome is also counted in `fairvox_call_records_total{result}`, so an SRE sees records that did not
//! reach the bill.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::call::record::{CallRecord, CallRecordSink};
use crate::metrics::Metrics;
use crate::store::{Conflict, Operator, Store, StoreError, TenantSlug};

/// Records queued for the writer at most; a burst of call ends larger than this while the disk stalls is dropped.
pub const QUEUE_CAPACITY: usize = 4096;
/// Tries per record on a storage failure, with a growing pause between them.
const ATTEMPTS: u32 = 3;

/// What became of the records handed to the store.
#[derive(Default)]
pub struct SinkStats {
    /// Written with their usage.
    pub written: AtomicU64,
    /// Not queued: the queue was full.
    pub dropped: AtomicU64,
    /// Queued but not written (storage failure after retries, unknown tenant, invalid record).
    pub failed: AtomicU64,
    /// Already recorded (same call id): nothing billed twice.
    pub duplicates: AtomicU64,
    /// Queued and not yet handled.
    pub pending: AtomicU64,
    /// Where the outcomes are counted for `/metrics` too (none in some tests).
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for SinkStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkStats")
            .field("written", &self.written)
            .field("dropped", &self.dropped)
            .field("failed", &self.failed)
            .field("duplicates", &self.duplicates)
            .field("pending", &self.pending)
            .finish()
    }
}

impl SinkStats {
    /// Counts one outcome here and, with the label it has there, in the metrics.
    fn count(&self, counter: &AtomicU64, result: &'static str) {
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.call_record(result);
        }
    }
}

/// What the writer thread takes from its queue, in order. Records are nearly every item, and the barrier rare:
/// boxing the record to shrink the enum would cost an allocation per call for nothing.
#[allow(clippy::large_enum_variant)]
enum Queued {
    Record(CallRecord),
    /// Answered once every record queued before it is handled (see [`RecordsFlush`]).
    Barrier(Sender<()>),
}

/// The writer thread and its queue.
pub struct StoreWriter {
    tx: Sender<Queued>,
    stats: Arc<SinkStats>,
}

/// Waits until the records queued so far are handled: the offboarding job uses it once a tenant's calls have ended
/// (their records were queued when their media tasks ended) and before it exports and bills them.
#[derive(Clone)]
pub struct RecordsFlush {
    tx: Sender<Queued>,
}

impl RecordsFlush {
    /// Blocks (a blocking thread only) until the records queued before now are handled, or `timeout` passes:
    /// whether they were.
    pub fn wait(&self, timeout: Duration) -> bool {
        let (done, handled) = crossbeam_channel::bounded(1);
        if self.tx.send_timeout(Queued::Barrier(done), timeout).is_err() {
            return false;
        }
        handled.recv_timeout(timeout).is_ok()
    }
}

impl StoreWriter {
    /// `metrics`: where each record's outcome is counted (`fairvox_call_records_total`), if anywhere.
    pub fn start(
        store: Arc<dyn Store>,
        capacity: usize,
        metrics: Option<Arc<Metrics>>,
    ) -> std::io::Result<StoreWriter> {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let stats = Arc::new(SinkStats { metrics, ..SinkStats::default() });
        let thread_stats = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("fairvox-call-records".into())
            .spawn(move || write_loop(store.as_ref(), &rx, &thread_stats))?;
        Ok(StoreWriter { tx, stats })
    }

    /// A sink that gives each record to `next`, then queues it for the store.
    pub fn sink(&self, next: Arc<dyn CallRecordSink>) -> StoreSink {
        StoreSink { next, tx: self.tx.clone(), stats: Arc::clone(&self.stats) }
    }

    pub fn flush_handle(&self) -> RecordsFlush {
        RecordsFlush { tx: self.tx.clone() }
    }

    pub fn stats(&self) -> &SinkStats {
        &self.stats
    }

    /// Waits until every queued record is handled, or `grace` passes.
    pub async fn flush(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while self.stats.pending.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.stats.pending.load(Ordering::Acquire);
        if left > 0 {
            tracing::error!(records = left, "call records not yet in the store at shutdown (the JSONL file has them)");
        }
    }
}

/// See the module doc.
pub struct StoreSink {
    next: Arc<dyn CallRecordSink>,
    tx: Sender<Queued>,
    stats: Arc<SinkStats>,
}

impl CallRecordSink for StoreSink {
    fn record(&self, record: &CallRecord) {
        self.next.record(record);
        self.stats.pending.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(Queued::Record(record.clone())) {
            Ok(()) => {}
            Err(TrySendError::Full(Queued::Record(r)) | TrySendError::Disconnected(Queued::Record(r))) => {
                self.stats.pending.fetch_sub(1, Ordering::AcqRel);
                self.stats.count(&self.stats.dropped, "dropped");
                tracing::error!(
                    tenant = %r.tenant, call_id = %r.call_sid,
                    "call record not queued for the store (queue full or writer gone); it is in the JSONL file"
                );
            }
            Err(_) => {}
        }
    }
}

fn write_loop(store: &dyn Store, rx: &Receiver<Queued>, stats: &SinkStats) {
    let operator = Operator::system("call-records");
    for queued in rx.iter() {
        let record = match queued {
            Queued::Record(record) => record,
            Queued::Barrier(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let outcome = write_one(store, &operator, &record);
        match outcome {
            Ok(()) => {
                stats.count(&stats.written, "written");
            }
            Err(StoreError::Conflict(Conflict::CallAlreadyRecorded)) => {
                stats.count(&stats.duplicates, "duplicate");
                tracing::warn!(tenant = %record.tenant, call_id = %record.call_sid, "call record already stored");
            }
            Err(e) => {
                stats.count(&stats.failed, "failed");
                tracing::error!(
                    tenant = %record.tenant, call_id = %record.call_sid, error = %e,
                    "call record not stored (it is in the JSONL file)"
                );
            }
        }
        stats.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

fn write_one(store: &dyn Store, operator: &Operator, record: &CallRecord) -> Result<(), StoreError> {
    let slug = TenantSlug::parse(&record.tenant)?;
    let mut attempt = 1;
    loop {
        let result =
            store.operator_scope(operator, &slug).and_then(|scope| store.record_call(&scope, record)).map(|_| ());
        match result {
            Err(StoreError::Backend(e)) if attempt < ATTEMPTS => {
                tracing::warn!(tenant = %record.tenant, call_id = %record.call_sid, error = %e, attempt, "retrying");
                std::thread::sleep(Duration::from_millis(100 * 4u64.pow(attempt - 1)));
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::record::EndReason;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{NewTenant, UsageQuery, UtcDay};
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<String>>);
    impl CallRecordSink for Collect {
        fn record(&self, r: &CallRecord) {
            self.0.lock().push(r.call_sid.clone());
        }
    }

    fn record(tenant: &str, sid: &str, secs: u64) -> CallRecord {
        CallRecord {
            tenant: tenant.into(),
            call_sid: sid.into(),
            sip_call_id: "x".into(),
            from: "+15557770001".into(),
            to: "+15551230001".into(),
            app: "rx".into(),
            invite_at_ms: 1_700_000_000_000,
            answer_at_ms: Some(1_700_000_000_500),
            end_at_ms: 1_700_000_000_500 + secs * 1000,
            duration_secs: secs,
            end_reason: EndReason::CallerBye,
            codec: "PCMU",
            transport: "sip",
            packets_in: 1,
            packets_out: 1,
            packets_lost: 0,
            dtmf_count: 0,
        }
    }

    #[tokio::test]
    async fn records_reach_the_next_sink_and_the_store_with_their_usage() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let op = Operator::system("test");
        let slug = TenantSlug::parse("acme").unwrap();
        store
            .create_tenant(
                &op,
                NewTenant {
                    id: slug.clone(),
                    name: crate::store::DisplayName::parse("Acme").unwrap(),
                    plan: crate::store::PlanName::parse("pro").unwrap(),
                },
            )
            .unwrap();
        let metrics = Arc::new(Metrics::new(&Default::default()));
        let writer = StoreWriter::start(Arc::clone(&store), 16, Some(Arc::clone(&metrics))).unwrap();
        let next = Arc::new(Collect::default());
        let sink = writer.sink(next.clone());
        sink.record(&record("acme", "CA1", 7));
        sink.record(&record("acme", "CA2", 5));
        sink.record(&record("acme", "CA1", 7));
        sink.record(&record("ghost", "CA3", 1));
        writer.flush(Duration::from_secs(10)).await;
        assert_eq!(next.0.lock().len(), 4, "the JSONL sink sees every record");
        let s = writer.stats();
        assert_eq!(s.written.load(Ordering::Relaxed), 2);
        assert_eq!(s.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(s.failed.load(Ordering::Relaxed), 1, "an unknown tenant is a failure, counted");
        let text = metrics.encode();
        for line in [
            "fairvox_call_records_total{result=\"written\"} 2",
            "fairvox_call_records_total{result=\"duplicate\"} 1",
            "fairvox_call_records_total{result=\"failed\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        let scope = store.operator_scope(&op, &slug).unwrap();
        let day = UtcDay::from_unix_ms(1_700_000_000_000);
        let usage = store.usage(&scope, UsageQuery { from: day, to: day.next() }).unwrap();
        assert_eq!(usage.iter().map(|u| u.billable_secs).sum::<i64>(), 12);
    }

    #[test]
    fn a_flush_returns_once_the_records_queued_before_it_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let op = Operator::system("test");
        let slug = TenantSlug::parse("acme").unwrap();
        let name = crate::store::DisplayName::parse("Acme").unwrap();
        let plan = crate::store::PlanName::parse("pro").unwrap();
        store.create_tenant(&op, NewTenant { id: slug.clone(), name, plan }).unwrap();
        let writer = StoreWriter::start(Arc::clone(&store), 64, None).unwrap();
        let sink = writer.sink(Arc::new(Collect::default()));
        for i in 0..20 {
            sink.record(&record("acme", &format!("CA{i}"), 1));
        }
        assert!(writer.flush_handle().wait(Duration::from_secs(10)));
        let scope = store.operator_scope(&op, &slug).unwrap();
        let calls = store.list_calls(&scope, Default::default()).unwrap();
        assert_eq!(calls.items.len(), 20, "every record queued before the flush is in the store when it returns");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        // A writer whose thread is never started: nothing drains the queue of 2.
        let (tx, _rx) = crossbeam_channel::bounded(2);
        let metrics = Arc::new(Metrics::new(&Default::default()));
        let stats = Arc::new(SinkStats { metrics: Some(Arc::clone(&metrics)), ..SinkStats::default() });
        let sink = StoreSink { next: Arc::new(Collect::default()), tx, stats: Arc::clone(&stats) };
        for i in 0..5 {
            sink.record(&record("acme", &format!("CA{i}"), 1));
        }
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(stats.pending.load(Ordering::Relaxed), 2);
        assert!(metrics.encode().lines().any(|l| l == "fairvox_call_records_total{result=\"dropped\"} 3"));
        drop(store);
    }
}
