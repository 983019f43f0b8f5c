//! WebRTC calls (WHIP, RFC 9725): turns an accepted offer into a call on the same path as a SIP call.
//!
//! Owns the live WHIP sessions ([`Whip`]): each is a call with the same routing checks (the tenant takes calls, the
//! app exists), the same admission (circuit breaker, then plan: rate, concurrency, budget, node cap), an RTP port
//! from the same pool (ICE-lite: the port's address is the one host candidate), the same media task
//! (`transport::media::run_call`: agent first, then the socket onto the media workers, playout, billing, record),
//! with a [`session::RtcSession`] in the call's inbound state in place of plain RTP. So a tenant's WebRTC traffic
//! queues in its own fair queue and counts against its own limits. The HTTP side is `api::whip`.
//!
//! One socket per session rather than str0m's shared-port demultiplexing: the media workers' scheduler works per
//! socket (a ready socket is one turn of its tenant), so a shared socket would be read before anyone knew whose
//! datagram it was, outside the fair queue. See `docs/webrtc.md`.

pub mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::call::CallId;
use crate::call::record::{CallRecordSink, EndReason};
use crate::call::uas::CallGuards;
use crate::codec::opus::PcmRate;
use crate::metrics::{Metrics, RejectReason};
use crate::proto::media_streams::MediaFormat;
use crate::proto::sdp::{Direction, Negotiated};
use crate::sched::admission;
use crate::sched::breaker::Pass;
use crate::sched::plan::{DEFAULT_MAX_FRAME_QUEUE_MS, PlanSet};
use crate::tenant::{Codec, Snapshot};
use crate::transport::ingress::MediaWorkers;
use crate::transport::media::{self, CallSetup, MediaCommand, MediaCounters, MediaReport};
use crate::transport::rtp_ports::RtpPortPool;
use crate::transport::sip::{MeteredSink, SipShutdown};

use session::{OfferError, RtcSession};

/// WebRTC call ids start here, apart from the SIP driver's (which count up from 1), so logs never mix them up.
const FIRST_CALL_ID: u64 = 1 << 48;
/// Longest a POST waits for its call to be ready (the agent reached) beyond the agent connect timeout.
const READY_SLACK: Duration = Duration::from_secs(2);

/// Why an offer got no call. `api::whip` turns each into its HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WhipRefusal {
    #[error(transparent)]
    Offer(#[from] OfferError),
    /// No such app for this tenant (or not routable yet).
    #[error("no such app")]
    UnknownApp,
    #[error("the tenant is suspended")]
    Suspended,
    #[error(transparent)]
    Admission(admission::Refusal),
    /// No RTP port free, the server draining, or the media workers refused the socket.
    #[error("media unavailable")]
    Unavailable { retry_after: u32 },
    /// The app's agent could not be reached.
    #[error("the agent could not be reached")]
    AgentUnavailable { retry_after: u32 },
}

/// A call the offer became: the answer to return and the session's id (its `Location`).
#[derive(Debug)]
pub struct WhipAnswer {
    pub session_id: String,
    pub answer_sdp: String,
}

/// What a WHIP call needs from the rest of the server.
pub struct WhipDeps {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub guards: CallGuards,
    pub ports: Arc<RtpPortPool>,
    pub workers: Arc<MediaWorkers>,
    pub metrics: Arc<Metrics>,
    pub sink: Arc<dyn CallRecordSink>,
    pub counters: Arc<MediaCounters>,
    pub calls: TaskTracker,
    pub shutdown: SipShutdown,
    /// The registry of live sessions, shared with whoever ends a tenant's calls (offboarding).
    pub sessions: WhipSessions,
}

/// The live WHIP sessions, by session id: made before the control plane so that offboarding can end a tenant's
/// WebRTC calls as the SIP driver ends its SIP calls.
#[derive(Clone, Default)]
pub struct WhipSessions {
    live: Arc<Mutex<HashMap<String, Live>>>,
}

impl WhipSessions {
    /// Live sessions now (all tenants).
    pub fn len(&self) -> usize {
        self.live.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every live session of `tenant` (its name); returns how many were asked to end.
    pub fn hang_up_tenant(&self, tenant: &str, reason: EndReason) -> usize {
        let live = self.live.lock();
        let mut ended = 0;
        for session in live.values().filter(|s| &*s.tenant == tenant) {
            let _ = session.commands.try_send(MediaCommand::Stop(reason));
            ended += 1;
        }
        ended
    }
}

/// The call settings a WHIP call shares with SIP calls.
#[derive(Clone)]
pub struct WhipSettings {
    pub advertise_ip: std::net::IpAddr,
    pub inactivity_timeout: Duration,
    pub connect_timeout: Duration,
    pub playout_max_samples: usize,
    pub plans: PlanSet,
}

/// The live WHIP sessions, and how to start one.
#[derive(Clone)]
pub struct Whip {
    inner: Arc<Inner>,
}

struct Inner {
    deps: WhipDeps,
    settings: WhipSettings,
    next_call: AtomicU64,
}

/// One live session: whose it is, and how to end it.
struct Live {
    tenant: Arc<str>,
    commands: mpsc::Sender<MediaCommand>,
}

impl Whip {
    pub fn new(deps: WhipDeps, settings: WhipSettings) -> Whip {
        Whip { inner: Arc::new(Inner { deps, settings, next_call: AtomicU64::new(FIRST_CALL_ID) }) }
    }

    /// Live sessions now (all tenants).
    pub fn live(&self) -> usize {
        self.inner.deps.sessions.len()
    }

    /// Turns `tenant`'s offer for its app `app_name` into a call: checks, admission, port, answer, then waits
    /// until the agent is reached (as a SIP call is answered only then). Refusals are counted per tenant.
    pub async fn offer(&self, tenant: &str, app_name: &str, offer: &str) -> Result<WhipAnswer, WhipRefusal> {
        let inner = &self.inner;
        let deps = &inner.deps;
        let snapshot = deps.snapshot.load_full();
        let Some(t) = snapshot.tenants().iter().find(|t| &*t.name == tenant) else {
            return Err(WhipRefusal::UnknownApp);
        };
        let handle = deps.metrics.tenant(t.id, &t.name);
        let Some(app_index) = t.apps.iter().position(|a| &*a.name == app_name && !a.name.is_empty()) else {
            return Err(WhipRefusal::UnknownApp);
        };
        let app = &t.apps[app_index];
        if t.suspended {
            handle.call_rejected(RejectReason::Suspended);
            return Err(WhipRefusal::Suspended);
        }
        if deps.shutdown.drain.is_cancelled() {
            handle.call_rejected(RejectReason::Overload);
            return Err(WhipRefusal::Unavailable { retry_after: 5 });
        }
        let Some(lease) = deps.ports.lease() else {
            handle.call_rejected(RejectReason::Overload);
            return Err(WhipRefusal::Unavailable { retry_after: 5 });
        };
        let bound = lease.rtp.local_addr().map_err(|_| WhipRefusal::Unavailable { retry_after: 5 })?;
        let advertised = SocketAddr::new(inner.settings.advertise_ip, lease.port);
        let now = Instant::now();
        // An L16 app gets the browser's wideband audio as it is: libopus decodes and encodes at 16 kHz.
        let media_format = app.media_format;
        let rate = match media_format {
            MediaFormat::Mulaw8k => PcmRate::Narrow,
            MediaFormat::L16Wide => PcmRate::Wide,
        };
        // The offer before admission, so that a bad one spends no token and no slot (as a SIP INVITE's SDP).
        let (session, answer_sdp) = match RtcSession::accept(offer, advertised, bound, rate, now) {
            Ok(accepted) => accepted,
            Err(e) => {
                handle.call_rejected(match e {
                    OfferError::NoAudio => RejectReason::Codec,
                    _ => RejectReason::BadSdp,
                });
                return Err(e.into());
            }
        };
        let pass = match deps.guards.breakers.check(t.id, app_index, now) {
            Ok(pass) => pass,
            Err(refusal) => {
                deps.guards.admission.record_refusal(t.id, &refusal);
                handle.call_rejected(&refusal);
                return Err(WhipRefusal::Admission(refusal));
            }
        };
        let permit = match deps.guards.admission.admit(t.id, now) {
            Ok(permit) => permit,
            Err(refusal) => {
                if pass == Pass::Trial {
                    deps.guards.breakers.cancel_trial(t.id, app_index);
                }
                handle.call_rejected(&refusal);
                return Err(WhipRefusal::Admission(refusal));
            }
        };

        let call = CallId(inner.next_call.fetch_add(1, Ordering::Relaxed));
        let session_id = format!("{:032x}", rand::random::<u128>());
        let max_ms = inner.settings.plans.get(&t.plan).map_or(DEFAULT_MAX_FRAME_QUEUE_MS, |p| p.max_frame_queue_ms());
        let setup = CallSetup {
            call,
            tenant: t.id,
            app_index,
            permit,
            guards: deps.guards.clone(),
            tenant_name: t.name.clone(),
            app_name: app.name.clone(),
            app_kind: app.kind.clone(),
            custom_parameters: app.custom_parameters.clone(),
            from: "webrtc".to_owned(),
            to: app.name.to_string(),
            sip_call_id: format!("whip-{session_id}"),
            negotiated: webrtc_negotiated(),
            invite_at: SystemTime::now(),
            inactivity_timeout: inner.settings.inactivity_timeout,
            connect_timeout: inner.settings.connect_timeout,
            playout_max_samples: inner.settings.playout_max_samples,
            advertise_ip: inner.settings.advertise_ip,
            workers: Arc::clone(&deps.workers),
            metrics: handle.clone(),
            max_frame_age: Duration::from_millis(u64::from(max_ms)),
            transport: media::Transport::Webrtc,
            media_format,
        };
        let (commands, command_rx) = mpsc::channel(8);
        let (reports, mut report_rx) = mpsc::channel(4);
        let sink: Arc<dyn CallRecordSink> =
            Arc::new(MeteredSink { inner: Arc::clone(&deps.sink), tenant: handle.clone() });
        inner
            .deps
            .sessions
            .live
            .lock()
            .insert(session_id.clone(), Live { tenant: t.name.clone(), commands: commands.clone() });
        let span = tracing::info_span!("call", tenant = %t.name, call_id = %call);
        tracing::info!(parent: &span, session = %session_id, app = %app.name, "incoming WebRTC call (WHIP)");
        let media = media::run_call(
            setup,
            Some(Box::new(session)),
            lease,
            command_rx,
            reports,
            sink,
            Arc::clone(&deps.counters),
        );
        let (whip, id, hang_up) = (self.clone(), session_id.clone(), deps.shutdown.hang_up.clone());
        deps.calls.spawn(
            async move {
                let _active = handle.call_started();
                let ends = ServerHangUp::watch(hang_up, commands);
                media.await;
                drop(ends);
                whip.inner.deps.sessions.live.lock().remove(&id);
            }
            .instrument(span),
        );

        let wait = inner.settings.connect_timeout + READY_SLACK;
        loop {
            match tokio::time::timeout(wait, report_rx.recv()).await {
                Ok(Some(MediaReport::Ready { .. })) => return Ok(WhipAnswer { session_id, answer_sdp }),
                Ok(Some(MediaReport::Failed { status, retry_after, .. })) => {
                    let retry_after = retry_after.unwrap_or(5);
                    return Err(if status == 480 {
                        WhipRefusal::AgentUnavailable { retry_after }
                    } else {
                        WhipRefusal::Unavailable { retry_after }
                    });
                }
                Ok(Some(MediaReport::Ended { .. })) => continue,
                // The task ended without a word, or never reported: end it if it still runs.
                Ok(None) | Err(_) => {
                    self.hang_up_any(&session_id, EndReason::MediaUnavailable);
                    return Err(WhipRefusal::Unavailable { retry_after: 5 });
                }
            }
        }
    }

    /// Ends `tenant`'s session `id` (WHIP `DELETE`); `false` when it has no such live session (another tenant's
    /// session is "no such session" too).
    pub fn hang_up(&self, tenant: &str, id: &str) -> bool {
        let sessions = self.inner.deps.sessions.live.lock();
        match sessions.get(id) {
            Some(live) if &*live.tenant == tenant => {
                let _ = live.commands.try_send(MediaCommand::Stop(EndReason::CallerHangup));
                true
            }
            _ => false,
        }
    }

    fn hang_up_any(&self, id: &str, reason: EndReason) {
        if let Some(live) = self.inner.deps.sessions.live.lock().get(id) {
            let _ = live.commands.try_send(MediaCommand::Stop(reason));
        }
    }
}

/// Ends a WHIP call when the server hangs up its calls at shutdown (SIP calls get their BYE from the SIP driver).
struct ServerHangUp(tokio::task::JoinHandle<()>);

impl ServerHangUp {
    fn watch(hang_up: CancellationToken, commands: mpsc::Sender<MediaCommand>) -> ServerHangUp {
        ServerHangUp(tokio::spawn(async move {
            hang_up.cancelled().await;
            let _ = commands.send(MediaCommand::Stop(EndReason::ServerDrain)).await;
        }))
    }
}

impl Drop for ServerHangUp {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the media task reads of a SIP negotiation, for a WebRTC call: both directions, no plain-RTP peer (the
/// session sends), no SIP telephone-event (digits come through the session).
fn webrtc_negotiated() -> Negotiated {
    Negotiated {
        codec: Codec::Pcmu,
        pt: 0,
        telephone_event_pt: None,
        ptime_ms: 20,
        remote: None,
        answer_direction: Direction::SendRecv,
        audio_index: 0,
    }
}
