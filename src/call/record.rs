//! Call records: the facts of one finished call, and the sinks that keep them.
//!
//! Every call that reached media setup ends in exactly one record. The server logs it as one structured line,
//! appends it to `call-records.jsonl` in the data directory, and stores it with its usage through the control
//! plane's sink (`api::sink::StoreSink`), all through the same [`CallRecordSink`] trait.

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Serialize;

/// Why a call ended, as a stable label.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The caller sent BYE.
    CallerBye,
    /// The caller cancelled before we answered.
    Cancelled,
    /// The agent closed its stream, so we sent BYE.
    AgentHangup,
    /// The agent could not be reached when the call was answered.
    AgentUnavailable,
    /// No RTP for the inactivity timeout, so we sent BYE.
    RtpTimeout,
    /// Our 2xx was never acknowledged.
    AckTimeout,
    /// The server was shutting down.
    ServerDrain,
    /// Media could not be set up (no free RTP port).
    MediaUnavailable,
    /// The tenant's monthly minutes ran out during the call, so we sent BYE.
    BudgetExhausted,
    /// The tenant was being offboarded and the call outlived the offboarding's grace, so we sent BYE.
    TenantOffboarded,
    /// A WebRTC caller hung up (WHIP `DELETE`).
    CallerHangup,
    /// A WebRTC peer became unreachable (ICE lost it for 10 s) or its session failed.
    PeerLost,
}

impl EndReason {
    pub fn label(&self) -> &'static str {
        match self {
            EndReason::CallerBye => "caller_bye",
            EndReason::Cancelled => "cancelled",
            EndReason::AgentHangup => "agent_hangup",
            EndReason::AgentUnavailable => "agent_unavailable",
            EndReason::RtpTimeout => "rtp_timeout",
            EndReason::AckTimeout => "ack_timeout",
            EndReason::ServerDrain => "server_drain",
            EndReason::MediaUnavailable => "media_unavailable",
            EndReason::BudgetExhausted => "budget_exhausted",
            EndReason::TenantOffboarded => "tenant_offboarded",
            EndReason::CallerHangup => "caller_hangup",
            EndReason::PeerLost => "peer_lost",
        }
    }
}

/// The record of one call. Times are Unix milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct CallRecord {
    pub tenant: String,
    /// Our call id (`callSid` in the provider stream).
    pub call_sid: String,
    pub sip_call_id: String,
    pub from: String,
    pub to: String,
    pub app: String,
    pub invite_at_ms: u64,
    pub answer_at_ms: Option<u64>,
    pub end_at_ms: u64,
    /// Seconds from answer to end, rounded down (0 when never answered).
    pub duration_secs: u64,
    pub end_reason: EndReason,
    pub codec: &'static str,
    /// How the caller reached us: `sip` or `webrtc`.
    pub transport: &'static str,
    pub packets_in: u64,
    pub packets_out: u64,
    pub packets_lost: u64,
    pub dtmf_count: u64,
}

/// Where finished calls go.
pub trait CallRecordSink: Send + Sync {
    fn record(&self, record: &CallRecord);
}

/// Logs each record as one structured line and appends it as JSON to a file.
pub struct LogAndFileSink {
    file: Mutex<Option<std::fs::File>>,
    path: PathBuf,
}

impl LogAndFileSink {
    /// Opens (creating) `path` for appending; if that fails, records are still logged and the failure is too.
    pub fn open(path: PathBuf) -> LogAndFileSink {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
        if let Err(e) = &file {
            tracing::error!(path = %path.display(), error = %e, "cannot open the call record file; records go to the log only");
        }
        LogAndFileSink { file: Mutex::new(file.ok()), path }
    }
}

impl CallRecordSink for LogAndFileSink {
    fn record(&self, r: &CallRecord) {
        tracing::info!(
            tenant = %r.tenant,
            call_sid = %r.call_sid,
            sip_call_id = %r.sip_call_id,
            from = %r.from,
            to = %r.to,
            app = %r.app,
            invite_at_ms = r.invite_at_ms,
            answer_at_ms = r.answer_at_ms,
            end_at_ms = r.end_at_ms,
            duration_secs = r.duration_secs,
            end_reason = r.end_reason.label(),
            codec = r.codec,
            packets_in = r.packets_in,
            packets_out = r.packets_out,
            packets_lost = r.packets_lost,
            dtmf_count = r.dtmf_count,
            "call record"
        );
        let Ok(mut line) = serde_json::to_vec(r) else { return };
        line.push(b'\n');
        let mut guard = self.file.lock();
        if let Some(f) = guard.as_mut()
            && let Err(e) = f.write_all(&line)
        {
            tracing::error!(path = %self.path.display(), error = %e, "cannot append call record");
        }
    }
}

/// Milliseconds since the Unix epoch, for records.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
