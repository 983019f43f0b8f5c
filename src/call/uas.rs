//! The SIP UAS core (RFC 3261 §8.2, §12-§15): turns transactions into call decisions, sans-IO.
//!
//! It routes each new INVITE (number -> tenant and app, trunk source check), negotiates SDP, answers, rejects,
//! hangs up, retransmits our 2xx until the ACK (§13.3.1.4), handles CANCEL, BYE, re-INVITE (hold/resume), INFO
//! DTMF and OPTIONS, and answers 481/405/400 where the RFC says so. The driver (`transport::sip`) feeds it bytes
//! and `now`, sets up media for each [`UasEvent::IncomingCall`], and then calls [`Uas::answer`] or
//! [`Uas::reject`]; when a call ends on the media side it calls [`Uas::hangup`]. Output is drained like the
//! transaction layer's: `poll_transmit`, `poll_event`, `poll_timeout`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::call::CallId;
use crate::metrics::{Metrics, SipMethod};
use crate::proto::sdp::{self, Negotiated, SessionOffer};
use crate::proto::sip::dialog::{CSeqCheck, Dialog, DialogKey, host_port};
use crate::proto::sip::transaction::{Peer, ServerTxId, Timers, TransactionLayer, Transmit, TxEvent};
use crate::proto::sip::{self, Limits, Message, Method, OutgoingResponse, Request};
use crate::sched::admission::{self, Admission, CallPermit};
use crate::sched::breaker::{Breakers, Pass};
use crate::tenant::{App, E164, RouteDecision, Snapshot, TenantId};

/// Methods we answer; everything else gets 405 with this list.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO";
const SERVER: &str = concat!("fairvox/", env!("CARGO_PKG_VERSION"));

#[derive(Clone, Debug)]
pub struct UasConfig {
    /// Our SIP address as peers reach it (Via, Contact) and the media address for SDP.
    pub local: SocketAddr,
    pub limits: Limits,
    pub timers: Timers,
    /// Calls this node takes at once; beyond it a new INVITE gets 503 with Retry-After.
    pub max_calls: usize,
    /// Seed for tags, branches and SDP session ids.
    pub seed: u64,
}

/// What admits calls: the per-tenant limits of their plans, and the per (tenant, app) circuit breakers.
#[derive(Clone)]
pub struct CallGuards {
    pub admission: Arc<Admission>,
    pub breakers: Arc<Breakers>,
}

/// A new call that routing, SDP and admission accepted; the driver prepares media and the provider, then answers.
pub struct IncomingCall {
    pub call: CallId,
    pub tenant: TenantId,
    pub tenant_name: Arc<str>,
    pub app: App,
    /// The app's index within its tenant (the circuit breaker's key).
    pub app_index: usize,
    /// The call's hold on its tenant's and the node's concurrency slots: released when dropped.
    pub permit: CallPermit,
    /// The caller: the From user as E.164 when it is a number, else as given.
    pub from: String,
    pub to: E164,
    pub sip_call_id: String,
    pub negotiated: Negotiated,
    pub source: Peer,
}

impl std::fmt::Debug for IncomingCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingCall")
            .field("call", &self.call)
            .field("tenant", &self.tenant_name)
            .field("app", &self.app.name)
            .field("from", &self.from)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

/// Why a call ended on the SIP side.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SipEnd {
    CallerBye,
    Cancelled,
    /// Our 2xx was never acknowledged (64*T1): we sent BYE.
    AckTimeout,
}

/// A BYE written for later: see [`Uas::bye_for_later`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedBye {
    /// The whole request, top Via carrying `branch`.
    pub bytes: Vec<u8>,
    pub branch: String,
    pub dest: Peer,
    /// The dialog's Call-ID, for logs.
    pub sip_call_id: String,
}

/// Why a request was refused, as a stable label.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    UnknownNumber,
    Forbidden,
    Codec,
    BadSdp,
    NoOffer,
    Overload,
    Unsupported,
    NoDialog,
    /// The number's tenant is suspended or being offboarded.
    Suspended,
    /// Refused by the tenant's plan (rate, concurrency, budget), the node, or the app's circuit breaker.
    Admission(admission::Refusal),
}

impl Refusal {
    /// The SIP status and reason phrase this refusal is answered with.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Refusal::UnknownNumber => (404, "Not Found"),
            Refusal::Forbidden => (403, "Forbidden - Source Not Allowed"),
            Refusal::Codec => (488, "Not Acceptable Here"),
            Refusal::BadSdp => (400, "Bad Request - Malformed SDP"),
            Refusal::NoOffer => (488, "Not Acceptable Here - SDP Offer Required"),
            Refusal::Overload => (503, "Service Unavailable"),
            Refusal::Unsupported => (405, "Method Not Allowed"),
            Refusal::NoDialog => (481, "Call/Transaction Does Not Exist"),
            Refusal::Suspended => (403, "Tenant Suspended"),
            Refusal::Admission(r) => r.sip_status(),
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Refusal::UnknownNumber => "unknown_number",
            Refusal::Forbidden => "forbidden",
            Refusal::Codec => "codec",
            Refusal::BadSdp => "bad_sdp",
            Refusal::NoOffer => "no_offer",
            Refusal::Overload => "overload",
            Refusal::Unsupported => "unsupported",
            Refusal::NoDialog => "no_dialog",
            Refusal::Suspended => "suspended",
            Refusal::Admission(r) => r.label(),
        }
    }
}

#[derive(Debug)]
pub enum UasEvent {
    IncomingCall(Box<IncomingCall>),
    /// The caller acknowledged our 2xx.
    Confirmed {
        call: CallId,
    },
    Ended {
        call: CallId,
        reason: SipEnd,
    },
    /// A re-INVITE changed direction (hold/resume) or the remote media address.
    MediaUpdate {
        call: CallId,
        negotiated: Negotiated,
    },
    /// A digit sent by SIP INFO (application/dtmf-relay or application/dtmf).
    Dtmf {
        call: CallId,
        digit: char,
    },
    /// A request was refused. `tenant` is the tenant the request was routed to, when routing got that far (for
    /// [`Refusal::Forbidden`], the tenant owning the number: the source is not on its trunks); `new_call` is true
    /// when the request was an INVITE outside any dialog, i.e. a call was refused.
    Refused {
        tenant: Option<TenantId>,
        status: u16,
        refusal: Refusal,
        new_call: bool,
        /// The request's Call-ID header, to tie the refusal to the carrier's logs.
        sip_call_id: String,
    },
    /// A message that did not parse; `label` says how.
    Malformed {
        label: &'static str,
        source: SocketAddr,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum LegState {
    /// INVITE received, not answered yet.
    Offered {
        invite_tx: ServerTxId,
    },
    /// 2xx sent, waiting for the ACK; `bye_on_ack` when the media side already hung up (§15: no BYE before ACK).
    Answered {
        bye_on_ack: bool,
    },
    Confirmed,
}

struct Pending2xx {
    bytes: Vec<u8>,
    dest: Peer,
    cseq: u32,
    next_at: Instant,
    interval: Duration,
    give_up_at: Instant,
}

struct Leg {
    state: LegState,
    invite: Box<Request>,
    dialog: Dialog,
    codecs: Vec<crate::tenant::Codec>,
    offer: SessionOffer,
    negotiated: Negotiated,
    local_rtp_port: u16,
    session_id: u64,
    sdp_version: u64,
    pending_2xx: Option<Pending2xx>,
}

/// Counters of the SIP side, read by metrics.
#[derive(Clone, Debug, Default)]
pub struct UasStats {
    pub requests: u64,
    pub responses: u64,
    pub malformed: u64,
    pub retransmissions_2xx: u64,
}

pub struct Uas {
    config: UasConfig,
    guards: CallGuards,
    tx: TransactionLayer,
    legs: HashMap<CallId, Leg>,
    dialogs: HashMap<DialogKey, CallId>,
    invites: HashMap<ServerTxId, CallId>,
    retransmitting: HashSet<CallId>,
    events: VecDeque<UasEvent>,
    next_call: u64,
    rng: u64,
    draining: bool,
    pub stats: UasStats,
    /// Where SIP messages in and out are counted (`fairvox_sip_messages_total`, `fairvox_sip_malformed_total`).
    metrics: Option<Arc<Metrics>>,
}

impl Uas {
    pub fn new(config: UasConfig, guards: CallGuards) -> Uas {
        Uas {
            guards,
            tx: TransactionLayer::new(config.timers),
            rng: config.seed | 1,
            config,
            legs: HashMap::new(),
            dialogs: HashMap::new(),
            invites: HashMap::new(),
            retransmitting: HashSet::new(),
            events: VecDeque::new(),
            next_call: 1,
            draining: false,
            stats: UasStats::default(),
            metrics: None,
        }
    }

    /// Counts every SIP message received (by method and status, malformed ones apart) and sent, retransmissions
    /// included, in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Uas {
        self.metrics = Some(metrics);
        self
    }

    /// Calls with SIP state (offered, answered or confirmed).
    pub fn active_calls(&self) -> usize {
        self.legs.len()
    }

    /// From now on new INVITEs get 503 with Retry-After (the server is shutting down); calls in progress go on.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    /// No call left and no BYE waiting for its answer: a draining server may stop.
    pub fn is_idle(&self) -> bool {
        self.legs.is_empty() && self.tx.awaiting_answers() == 0
    }

    /// One message from the network: a UDP datagram, or one framed TCP message.
    pub fn handle_message(&mut self, now: Instant, bytes: &[u8], source: Peer, snapshot: &Snapshot) {
        match sip::parse_message(bytes, &self.config.limits) {
            Err(err) => {
                self.stats.malformed += 1;
                if let Some(m) = &self.metrics {
                    m.sip_malformed();
                }
                self.events.push_back(UasEvent::Malformed { label: err.kind.label(), source: source.addr });
                if let Some(response) = sip::error_response(&err) {
                    self.tx.send_stateless(source, response);
                }
            }
            Ok(Message::Request(mut request)) => {
                self.stats.requests += 1;
                if let Some(m) = &self.metrics {
                    m.sip_message(SipMethod::from(&request.method), None);
                }
                stamp_received(&mut request, source.addr);
                self.tx.handle_request(now, request, source);
            }
            Ok(Message::Response(response)) => {
                self.stats.responses += 1;
                if let Some(m) = &self.metrics {
                    m.sip_message(SipMethod::from(&response.cseq.method), Some(response.status));
                }
                self.tx.handle_response(now, response);
            }
        }
        self.process(now, snapshot);
    }

    /// The TCP connection `conn` closed.
    pub fn handle_connection_lost(&mut self, now: Instant, conn: u64, snapshot: &Snapshot) {
        self.tx.handle_connection_lost(conn);
        self.process(now, snapshot);
    }

    pub fn handle_timeout(&mut self, now: Instant, snapshot: &Snapshot) {
        self.tx.handle_timeout(now);
        let due: Vec<CallId> = self
            .retransmitting
            .iter()
            .copied()
            .filter(|c| self.legs.get(c).and_then(|l| l.pending_2xx.as_ref()).is_some_and(|p| p.next_at <= now))
            .collect();
        let t2 = self.config.timers.t2;
        for call in due {
            let Some(leg) = self.legs.get_mut(&call) else { continue };
            let Some(p) = leg.pending_2xx.as_mut() else { continue };
            if p.give_up_at <= now {
                leg.pending_2xx = None;
                self.retransmitting.remove(&call);
                // §13.3.1.4: the dialog is confirmed but the session is terminated with BYE.
                self.send_bye(now, call);
                self.events.push_back(UasEvent::Ended { call, reason: SipEnd::AckTimeout });
                continue;
            }
            self.tx.send_stateless(p.dest, p.bytes.clone());
            self.stats.retransmissions_2xx += 1;
            p.interval = (p.interval * 2).min(t2);
            p.next_at = (now + p.interval).min(p.give_up_at);
        }
        self.process(now, snapshot);
    }

    /// Answers an offered call with 200 OK and our SDP (media at `local_rtp_port` on the advertised address).
    pub fn answer(&mut self, now: Instant, call: CallId, local_rtp_port: u16) {
        let local = self.config.local;
        let t1 = self.config.timers.t1;
        let Some(leg) = self.legs.get_mut(&call) else { return };
        let LegState::Offered { invite_tx } = leg.state else { return };
        leg.local_rtp_port = local_rtp_port;
        let sdp =
            sdp::write_answer(&leg.negotiated, &leg.offer, local.ip(), local_rtp_port, leg.session_id, leg.sdp_version);
        let mut response = OutgoingResponse::for_request(&leg.invite, 200, "OK").to_tag(&leg.dialog.key.local_tag);
        for rr in &leg.invite.record_route {
            response = response.header("Record-Route", rr.raw.clone());
        }
        let response = response
            .header("Contact", contact(local, leg.dialog_transport()))
            .header("Allow", ALLOW)
            .header("Server", SERVER)
            .body("application/sdp", Bytes::from(sdp));
        if self.tx.respond(now, invite_tx, &response).is_err() {
            return;
        }
        self.invites.remove(&invite_tx);
        leg.state = LegState::Answered { bye_on_ack: false };
        leg.pending_2xx = Some(Pending2xx {
            bytes: response.to_bytes(),
            dest: leg.dialog_origin(),
            cseq: leg.invite.cseq.seq,
            next_at: now + t1,
            interval: t1,
            give_up_at: now + 64 * t1,
        });
        self.retransmitting.insert(call);
    }

    /// Refuses an offered call (e.g. 480/503 when its agent cannot be reached), with an optional Retry-After.
    pub fn reject(&mut self, now: Instant, call: CallId, status: u16, reason: &str, retry_after: Option<u32>) {
        let Some(leg) = self.legs.get(&call) else { return };
        let LegState::Offered { invite_tx } = leg.state else { return };
        let mut response = OutgoingResponse::for_request(&leg.invite, status, reason).to_tag(&leg.dialog.key.local_tag);
        if let Some(secs) = retry_after {
            response = response.header("Retry-After", secs.to_string());
        }
        let _ = self.tx.respond(now, invite_tx, &response.header("Server", SERVER));
        self.remove_leg(call);
    }

    /// The BYE that would end an answered call, written now to be sent by a later process if this one dies before
    /// it ends the call (the offboarding job keeps these for the calls it drains). Built on a copy of the dialog:
    /// nothing of the call changes, and if this process sends its own BYE, the kept one is never needed. `None`
    /// for a call not answered yet (a crash leaves its INVITE unanswered, which the caller times out on its own).
    pub fn bye_for_later(&mut self, call: CallId) -> Option<PreparedBye> {
        let branch = format!("z9hG4bK{}", self.token());
        let local = self.config.local;
        let leg = self.legs.get(&call)?;
        if matches!(leg.state, LegState::Offered { .. }) {
            return None;
        }
        let mut dialog = leg.dialog.clone();
        let (request, dest) = dialog.request(Method::Bye, local, &branch);
        Some(PreparedBye { bytes: request.to_bytes(), branch, dest, sip_call_id: leg.dialog.key.call_id.clone() })
    }

    /// Sends a BYE written by [`Uas::bye_for_later`] in an earlier process, in a client transaction (retransmitted
    /// over UDP until answered or timer F). The answer needs nothing: the dialog died with that process.
    pub fn send_prepared_bye(&mut self, now: Instant, bye: &PreparedBye) {
        self.tx.send_request_bytes(now, bye.bytes.clone(), Method::Bye, &bye.branch, bye.dest);
    }

    /// The media side ended the call: BYE if it was answered, 480 if it was still being set up.
    pub fn hangup(&mut self, now: Instant, call: CallId) {
        let Some(leg) = self.legs.get_mut(&call) else { return };
        match leg.state {
            LegState::Offered { .. } => self.reject(now, call, 480, "Temporarily Unavailable", None),
            LegState::Answered { ref mut bye_on_ack } => *bye_on_ack = true,
            LegState::Confirmed => self.send_bye(now, call),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let transmit = self.tx.poll_transmit()?;
        if let Some(m) = &self.metrics {
            // Everything sent was written by us, so the start line and CSeq are there; `OTHER` if not.
            let (method, status) = outgoing_kind(&transmit.bytes);
            m.sip_message(method, status);
        }
        Some(transmit)
    }

    pub fn poll_event(&mut self) -> Option<UasEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let retransmit = self
            .retransmitting
            .iter()
            .filter_map(|c| self.legs.get(c).and_then(|l| l.pending_2xx.as_ref()).map(|p| p.next_at))
            .min();
        match (self.tx.poll_timeout(), retransmit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- internals ----

    fn process(&mut self, now: Instant, snapshot: &Snapshot) {
        while let Some(event) = self.tx.poll_event() {
            match event {
                TxEvent::Request { tx, request, source, invite_tx } => {
                    self.on_request(now, tx, *request, source, invite_tx, snapshot)
                }
                TxEvent::Ack { request, .. } => self.on_ack(now, &request),
                // BYE answers and timeouts need no action: the leg is gone once we send BYE.
                TxEvent::Response { .. } | TxEvent::ClientTimeout { .. } | TxEvent::AckTimeout { .. } => {}
            }
        }
    }

    fn respond(&mut self, now: Instant, tx: ServerTxId, req: &Request, status: u16, reason: &str) {
        let tag = self.token();
        let response = OutgoingResponse::for_request(req, status, reason).to_tag(&tag).header("Server", SERVER);
        let _ = self.tx.respond(now, tx, &response);
    }

    fn refuse(&mut self, now: Instant, tx: ServerTxId, req: &Request, refusal: Refusal, tenant: Option<TenantId>) {
        let (status, reason) = refusal.status();
        self.respond(now, tx, req, status, reason);
        self.push_refused(req, tenant, status, refusal);
    }

    fn push_refused(&mut self, req: &Request, tenant: Option<TenantId>, status: u16, refusal: Refusal) {
        let new_call = req.method == Method::Invite && req.to.tag().is_none();
        self.events.push_back(UasEvent::Refused {
            tenant,
            status,
            refusal,
            new_call,
            sip_call_id: req.call_id.clone(),
        });
    }

    fn on_request(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: Request,
        source: Peer,
        invite_tx: Option<ServerTxId>,
        snapshot: &Snapshot,
    ) {
        if req.method == Method::Cancel {
            return self.on_cancel(now, tx, &req, invite_tx);
        }
        if let Err(rejection) = sip::check_request(&req) {
            let tag = self.token();
            let mut response = OutgoingResponse::for_request(&req, rejection.status, rejection.reason)
                .to_tag(&tag)
                .header("Server", SERVER);
            for (name, value) in rejection.extra_headers {
                response = response.header(name, value);
            }
            let _ = self.tx.respond(now, tx, &response);
            self.push_refused(&req, None, rejection.status, Refusal::Unsupported);
            return;
        }
        if req.to.tag().is_some() {
            return self.on_in_dialog(now, tx, req);
        }
        match req.method {
            Method::Invite => self.on_invite(now, tx, req, source, snapshot),
            Method::Options => self.on_options(now, tx, &req),
            Method::Bye | Method::Info | Method::Update | Method::Prack => {
                self.refuse(now, tx, &req, Refusal::NoDialog, None)
            }
            _ => self.method_not_allowed(now, tx, &req),
        }
    }

    fn method_not_allowed(&mut self, now: Instant, tx: ServerTxId, req: &Request) {
        let tag = self.token();
        let response = OutgoingResponse::for_request(req, 405, "Method Not Allowed")
            .to_tag(&tag)
            .header("Allow", ALLOW)
            .header("Server", SERVER);
        let _ = self.tx.respond(now, tx, &response);
        self.push_refused(req, None, 405, Refusal::Unsupported);
    }

    fn on_options(&mut self, now: Instant, tx: ServerTxId, req: &Request) {
        let tag = self.token();
        let response = OutgoingResponse::for_request(req, 200, "OK")
            .to_tag(&tag)
            .header("Allow", ALLOW)
            .header("Accept", "application/sdp")
            .header("Server", SERVER);
        let _ = self.tx.respond(now, tx, &response);
    }

    fn refuse_admission(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: &Request,
        refusal: admission::Refusal,
        tenant: TenantId,
    ) {
        let (status, reason) = refusal.sip_status();
        let tag = self.token();
        let mut response = OutgoingResponse::for_request(req, status, reason).to_tag(&tag).header("Server", SERVER);
        if let Some(secs) = refusal.retry_after() {
            response = response.header("Retry-After", secs.to_string());
        }
        let _ = self.tx.respond(now, tx, &response);
        self.push_refused(req, Some(tenant), status, Refusal::Admission(refusal));
    }

    fn on_invite(&mut self, now: Instant, tx: ServerTxId, req: Request, source: Peer, snapshot: &Snapshot) {
        let number = req.uri.user.as_deref().and_then(|u| E164::parse(user_number(u)).ok());
        if self.draining || self.legs.len() >= self.config.max_calls {
            let tag = self.token();
            let response = OutgoingResponse::for_request(&req, 503, "Service Unavailable")
                .to_tag(&tag)
                .header("Retry-After", "5")
                .header("Server", SERVER);
            let _ = self.tx.respond(now, tx, &response);
            // Refused before routing (overload protection comes first), but charged to the tenant the call was
            // for when its number routes from an allowed source, so that an SRE sees whose calls a full or
            // draining node turns away.
            let tenant = number.as_ref().and_then(|n| match snapshot.route(n, source.addr.ip()) {
                RouteDecision::Accept { tenant, .. } => Some(tenant.id),
                _ => None,
            });
            self.push_refused(&req, tenant, 503, Refusal::Overload);
            return;
        }
        let Some(number) = number else {
            return self.refuse(now, tx, &req, Refusal::UnknownNumber, None);
        };
        let (tenant, app, app_index) = match snapshot.route(&number, source.addr.ip()) {
            RouteDecision::Accept { tenant, app, app_index } => (tenant, app, app_index),
            RouteDecision::UnknownNumber => {
                return self.refuse(now, tx, &req, Refusal::UnknownNumber, None);
            }
            RouteDecision::ForbiddenSource { tenant } => {
                let id = tenant.id;
                return self.refuse(now, tx, &req, Refusal::Forbidden, Some(id));
            }
            RouteDecision::Suspended { tenant } => {
                let id = tenant.id;
                return self.refuse(now, tx, &req, Refusal::Suspended, Some(id));
            }
        };
        let body = req.sdp().unwrap_or_default();
        let offer = match sdp::parse_offer(&body) {
            Ok(offer) => offer,
            Err(_) if body.is_empty() => {
                let id = tenant.id;
                return self.refuse(now, tx, &req, Refusal::NoOffer, Some(id));
            }
            Err(_) => {
                let id = tenant.id;
                return self.refuse(now, tx, &req, Refusal::BadSdp, Some(id));
            }
        };
        let negotiated = match sdp::negotiate(&offer, &app.codecs) {
            Ok(n) => n,
            Err(_) => {
                let id = tenant.id;
                return self.refuse(now, tx, &req, Refusal::Codec, Some(id));
            }
        };
        // Admission last, so that a call refused for its number, source or codec spends no token and no slot.
        let pass = match self.guards.breakers.check(tenant.id, app_index, now) {
            Ok(pass) => pass,
            Err(refusal) => {
                self.guards.admission.record_refusal(tenant.id, &refusal);
                let id = tenant.id;
                return self.refuse_admission(now, tx, &req, refusal, id);
            }
        };
        let permit = match self.guards.admission.admit(tenant.id, now) {
            Ok(permit) => permit,
            Err(refusal) => {
                if pass == Pass::Trial {
                    self.guards.breakers.cancel_trial(tenant.id, app_index);
                }
                let id = tenant.id;
                return self.refuse_admission(now, tx, &req, refusal, id);
            }
        };
        let trying = OutgoingResponse::for_request(&req, 100, "Trying").header("Server", SERVER);
        let _ = self.tx.respond(now, tx, &trying);

        let call = CallId(self.next_call);
        self.next_call += 1;
        let local_tag = self.token();
        let session_id = self.next_random() >> 1;
        let dialog = Dialog::new_uas(&req, local_tag, source, (self.next_random() as u32) >> 8);
        let from = req
            .from
            .uri
            .user
            .as_deref()
            .and_then(|u| E164::parse(user_number(u)).ok())
            .map(|e| e.to_string())
            .or_else(|| req.from.uri.user.clone())
            .unwrap_or_else(|| req.from.uri.raw.clone());
        let incoming = IncomingCall {
            call,
            tenant: tenant.id,
            tenant_name: tenant.name.clone(),
            app: app.clone(),
            app_index,
            permit,
            from,
            to: number,
            sip_call_id: req.call_id.clone(),
            negotiated: negotiated.clone(),
            source,
        };
        self.dialogs.insert(dialog.key.clone(), call);
        self.invites.insert(tx, call);
        self.legs.insert(
            call,
            Leg {
                state: LegState::Offered { invite_tx: tx },
                invite: Box::new(req),
                dialog,
                codecs: app.codecs.clone(),
                offer,
                negotiated,
                local_rtp_port: 0,
                session_id,
                sdp_version: 1,
                pending_2xx: None,
            },
        );
        self.events.push_back(UasEvent::IncomingCall(Box::new(incoming)));
    }

    fn on_cancel(&mut self, now: Instant, tx: ServerTxId, req: &Request, invite_tx: Option<ServerTxId>) {
        let call = invite_tx.and_then(|t| self.invites.get(&t).copied());
        let Some(call) = call else {
            return self.refuse(now, tx, req, Refusal::NoDialog, None);
        };
        // §9.2: 200 to the CANCEL; the INVITE, still unanswered, ends with 487.
        self.respond(now, tx, req, 200, "OK");
        if let Some(leg) = self.legs.get(&call)
            && let LegState::Offered { invite_tx } = leg.state
        {
            let response = OutgoingResponse::for_request(&leg.invite, 487, "Request Terminated")
                .to_tag(&leg.dialog.key.local_tag)
                .header("Server", SERVER);
            let _ = self.tx.respond(now, invite_tx, &response);
            self.remove_leg(call);
            self.events.push_back(UasEvent::Ended { call, reason: SipEnd::Cancelled });
        }
    }

    fn on_in_dialog(&mut self, now: Instant, tx: ServerTxId, req: Request) {
        let call = DialogKey::of_request(&req).and_then(|k| self.dialogs.get(&k).copied());
        let Some(call) = call else {
            return self.refuse(now, tx, &req, Refusal::NoDialog, None);
        };
        let Some(leg) = self.legs.get_mut(&call) else {
            return self.refuse(now, tx, &req, Refusal::NoDialog, None);
        };
        if leg.dialog.check_remote_cseq(req.cseq.seq, &req.method) == CSeqCheck::OutOfOrder {
            return self.respond(now, tx, &req, 500, "Server Internal Error - CSeq Out Of Order");
        }
        match req.method {
            Method::Bye => {
                self.respond(now, tx, &req, 200, "OK");
                self.remove_leg(call);
                self.events.push_back(UasEvent::Ended { call, reason: SipEnd::CallerBye });
            }
            Method::Invite => self.on_reinvite(now, tx, call, req),
            Method::Info => {
                let digit = info_digit(&req);
                let known = digit.is_some() || req.body.is_empty();
                if known {
                    self.respond(now, tx, &req, 200, "OK");
                } else {
                    let response = OutgoingResponse::for_request(&req, 415, "Unsupported Media Type")
                        .header("Accept", "application/dtmf-relay, application/dtmf")
                        .header("Server", SERVER);
                    let _ = self.tx.respond(now, tx, &response);
                }
                if let Some(digit) = digit {
                    self.events.push_back(UasEvent::Dtmf { call, digit });
                }
            }
            Method::Options => self.on_options(now, tx, &req),
            _ => self.method_not_allowed(now, tx, &req),
        }
    }

    fn on_reinvite(&mut self, now: Instant, tx: ServerTxId, call: CallId, req: Request) {
        let local = self.config.local;
        let t1 = self.config.timers.t1;
        let Some(leg) = self.legs.get_mut(&call) else { return };
        if leg.state != LegState::Confirmed {
            return self.respond(now, tx, &req, 491, "Request Pending");
        }
        let body = req.sdp().unwrap_or_default();
        let (offer, negotiated) = if body.is_empty() {
            // No offer: our 200 carries the current session again (as an offer; the ACK's answer is not needed
            // to keep the media we already run).
            (leg.offer.clone(), leg.negotiated.clone())
        } else {
            let parsed =
                sdp::parse_offer(&body).ok().and_then(|o| sdp::negotiate(&o, &leg.codecs).ok().map(|n| (o, n)));
            match parsed {
                Some(pair) => pair,
                // §14.2: a re-INVITE we cannot accept leaves the session as it was.
                None => return self.respond(now, tx, &req, 488, "Not Acceptable Here"),
            }
        };
        leg.sdp_version += 1;
        let sdp =
            sdp::write_answer(&negotiated, &offer, local.ip(), leg.local_rtp_port, leg.session_id, leg.sdp_version);
        let response = OutgoingResponse::for_request(&req, 200, "OK")
            .header("Contact", contact(local, leg.dialog_transport()))
            .header("Allow", ALLOW)
            .header("Server", SERVER)
            .body("application/sdp", Bytes::from(sdp));
        if self.tx.respond(now, tx, &response).is_err() {
            return;
        }
        leg.pending_2xx = Some(Pending2xx {
            bytes: response.to_bytes(),
            dest: leg.dialog_origin(),
            cseq: req.cseq.seq,
            next_at: now + t1,
            interval: t1,
            give_up_at: now + 64 * t1,
        });
        leg.offer = offer;
        leg.negotiated = negotiated.clone();
        self.retransmitting.insert(call);
        self.events.push_back(UasEvent::MediaUpdate { call, negotiated });
    }

    fn on_ack(&mut self, now: Instant, req: &Request) {
        let Some(call) = DialogKey::of_request(req).and_then(|k| self.dialogs.get(&k).copied()) else { return };
        let Some(leg) = self.legs.get_mut(&call) else { return };
        if leg.pending_2xx.as_ref().is_some_and(|p| p.cseq == req.cseq.seq) {
            leg.pending_2xx = None;
            self.retransmitting.remove(&call);
        }
        if let LegState::Answered { bye_on_ack } = leg.state {
            leg.state = LegState::Confirmed;
            if bye_on_ack {
                self.send_bye(now, call);
            } else {
                self.events.push_back(UasEvent::Confirmed { call });
            }
        }
    }

    fn send_bye(&mut self, now: Instant, call: CallId) {
        let branch = format!("z9hG4bK{}", self.token());
        let local = self.config.local;
        let Some(leg) = self.legs.get_mut(&call) else { return };
        let (request, dest) = leg.dialog.request(Method::Bye, local, &branch);
        self.tx.send_request(now, &request, &branch, dest);
        self.remove_leg(call);
    }

    fn remove_leg(&mut self, call: CallId) {
        if let Some(leg) = self.legs.remove(&call) {
            self.dialogs.remove(&leg.dialog.key);
            if let LegState::Offered { invite_tx } = leg.state {
                self.invites.remove(&invite_tx);
            }
        }
        self.retransmitting.remove(&call);
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64: tags and branches need uniqueness, not secrecy.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn token(&mut self) -> String {
        format!("{:016x}", self.next_random())
    }
}

impl Leg {
    fn dialog_origin(&self) -> Peer {
        self.dialog.origin()
    }

    fn dialog_transport(&self) -> crate::proto::sip::transaction::Transport {
        self.dialog.origin().transport
    }
}

/// RFC 3261 §18.2.1 and RFC 3581: record where the request really came from in its top Via.
fn stamp_received(req: &mut Request, source: SocketAddr) {
    let Some(top) = req.via.first_mut() else { return };
    let host = top.host.trim_start_matches('[').trim_end_matches(']');
    let differs = host.parse::<IpAddr>().map(|ip| ip != source.ip()).unwrap_or(true);
    let wants_rport = top.rport.is_some();
    if differs || wants_rport {
        top.received = Some(source.ip().to_string());
    }
    if wants_rport {
        top.rport = Some(Some(source.port()));
    }
}

fn contact(local: SocketAddr, transport: crate::proto::sip::transaction::Transport) -> String {
    if transport.is_reliable() {
        format!("<sip:fairvox@{};transport=tcp>", host_port(local))
    } else {
        format!("<sip:fairvox@{}>", host_port(local))
    }
}

/// The number part of a Request-URI user: drops `;params` (e.g. `;npdi`) that some carriers add.
fn user_number(user: &str) -> &str {
    user.split(';').next().unwrap_or(user)
}

/// The `fairvox_sip_messages_total` labels of a message we send: the method of its CSeq and, for a response, its
/// status. Reads the start line and the CSeq header only; anything unexpected is `OTHER` / no status.
fn outgoing_kind(bytes: &[u8]) -> (SipMethod, Option<u16>) {
    let head = &bytes[..bytes.len().min(4096)];
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let start = lines.next().unwrap_or_default();
    let status = start
        .strip_prefix(b"SIP/2.0 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse::<u16>().ok());
    let method_name = |name: &[u8]| std::str::from_utf8(name).map(SipMethod::from_name).unwrap_or(SipMethod::Other);
    let method = if start.starts_with(b"SIP/2.0 ") {
        lines
            .take_while(|l| !l.is_empty())
            .find_map(|l| {
                let (name, value) = l.split_at(l.iter().position(|&b| b == b':')?);
                if !name.trim_ascii().eq_ignore_ascii_case(b"CSeq") {
                    return None;
                }
                let method =
                    value[1..].trim_ascii().split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()).nth(1)?;
                Some(method_name(method))
            })
            .unwrap_or(SipMethod::Other)
    } else {
        method_name(start.split(|&b| b == b' ').next().unwrap_or_default())
    };
    (method, status)
}

/// A digit carried by SIP INFO: `application/dtmf-relay` (`Signal=5`) or `application/dtmf` (`5`).
fn info_digit(req: &Request) -> Option<char> {
    let body = std::str::from_utf8(&req.body).ok()?;
    let value = match req.content_type.as_deref() {
        Some("application/dtmf-relay") => body.lines().find_map(|l| {
            l.split_once('=').filter(|(k, _)| k.trim().eq_ignore_ascii_case("signal")).map(|(_, v)| v.trim())
        })?,
        Some("application/dtmf") => body.trim(),
        _ => return None,
    };
    let mut chars = value.chars();
    let c = chars.next()?.to_ascii_uppercase();
    let valid = chars.next().is_none() && (c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D'));
    valid.then_some(c)
}

#[cfg(test)]
mod tests {
    //! The UAS core and the transaction layer beneath it, driven with real message bytes in virtual time.

    use super::*;
    use crate::config::{Config, Overrides};
    use crate::proto::sdp::Direction;
    use crate::proto::sip::transaction::Transport;

    const CALLER: &str = "127.0.0.1:5099";

    struct Harness {
        uas: Uas,
        snapshot: Snapshot,
        now: Instant,
        permits: Vec<CallPermit>,
    }

    impl Harness {
        fn new() -> Harness {
            Harness::with_config(Config::load(None, &Overrides::default()).unwrap())
        }

        fn with_config(config: Config) -> Harness {
            let guards = crate::server::call_guards(&config).unwrap();
            let uas = Uas::new(
                UasConfig {
                    local: "127.0.0.1:5060".parse().unwrap(),
                    limits: Limits::default(),
                    timers: Timers::default(),
                    max_calls: 4,
                    seed: 7,
                },
                guards,
            );
            Harness { uas, snapshot: config.snapshot(), now: Instant::now(), permits: Vec::new() }
        }

        /// Keeps each answered call's permit, as the media task does, so slots stay taken.
        fn keep_permits(&mut self, events: Vec<UasEvent>) -> Vec<UasEvent> {
            events
                .into_iter()
                .map(|e| match e {
                    UasEvent::IncomingCall(c) => {
                        let call = *c;
                        let (call_id, permit) = (call.call, call.permit);
                        self.permits.push(permit);
                        UasEvent::Confirmed { call: call_id }
                    }
                    other => other,
                })
                .collect()
        }

        fn send(&mut self, msg: &str) {
            self.send_from(msg, CALLER);
        }

        fn send_from(&mut self, msg: &str, from: &str) {
            let peer = Peer { addr: from.parse().unwrap(), transport: Transport::Udp };
            self.uas.handle_message(self.now, msg.as_bytes(), peer, &self.snapshot);
        }

        /// Advances virtual time, firing every deadline on the way.
        fn advance(&mut self, by: Duration) {
            let end = self.now + by;
            while let Some(t) = self.uas.poll_timeout().filter(|t| *t <= end) {
                self.now = t.max(self.now);
                self.uas.handle_timeout(self.now, &self.snapshot);
            }
            self.now = end;
        }

        fn sent(&mut self) -> Vec<(String, SocketAddr)> {
            std::iter::from_fn(|| self.uas.poll_transmit())
                .map(|t| (String::from_utf8(t.bytes).unwrap(), t.dest.addr))
                .collect()
        }

        fn events(&mut self) -> Vec<UasEvent> {
            std::iter::from_fn(|| self.uas.poll_event()).collect()
        }

        fn statuses(&mut self) -> Vec<u16> {
            self.sent().iter().filter_map(|(m, _)| status_of(m)).collect()
        }

        /// INVITE, 100, IncomingCall, then answer: returns the call and the 200's To tag.
        fn answered_call(&mut self, call_id: &str) -> (CallId, String) {
            self.send(&invite(call_id, "15550100", &offer("0 8 101")));
            let call = match self.events().as_slice() {
                [UasEvent::IncomingCall(c)] => c.call,
                other => panic!("expected IncomingCall, got {other:?}"),
            };
            assert_eq!(self.statuses(), vec![100]);
            self.uas.answer(self.now, call, 20000);
            let sent = self.sent();
            assert_eq!(sent.len(), 1);
            assert_eq!(status_of(&sent[0].0), Some(200));
            (call, to_tag(&sent[0].0))
        }
    }

    fn status_of(msg: &str) -> Option<u16> {
        msg.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
    }

    fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
        msg.split("\r\n")
            .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
    }

    fn to_tag(msg: &str) -> String {
        header(msg, "To").and_then(|v| v.split(";tag=").nth(1)).unwrap().to_owned()
    }

    fn offer(formats: &str) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP {formats}\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n"
        )
    }

    // A test's request line-up reads best as one call per message; a builder would hide the differences.
    #[allow(clippy::too_many_arguments)]
    fn request(
        method: &str,
        call_id: &str,
        user: &str,
        branch: &str,
        cseq: u32,
        to_tag: Option<&str>,
        extra: &str,
        ct: &str,
        body: &str,
    ) -> String {
        let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        let ct = if body.is_empty() { String::new() } else { format!("Content-Type: {ct}\r\n") };
        format!(
            "{method} sip:{user}@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:+15557770001@127.0.0.1:5099>;tag=caller1\r\nTo: <sip:{user}@127.0.0.1:5060>{to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:caller@127.0.0.1:5099>\r\n{extra}{ct}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn invite(call_id: &str, user: &str, sdp: &str) -> String {
        request("INVITE", call_id, user, &format!("inv-{call_id}"), 1, None, "", "application/sdp", sdp)
    }

    #[test]
    fn invite_gets_100_then_200_retransmitted_until_ack() {
        let mut h = Harness::new();
        let (call, tag) = h.answered_call("c1");
        // Retransmissions at T1, 2T1, 4T1 (0.5, 1.5, 3.5 s after the first).
        h.advance(Duration::from_millis(499));
        assert!(h.sent().is_empty());
        h.advance(Duration::from_millis(1));
        assert_eq!(h.statuses(), vec![200]);
        h.advance(Duration::from_secs(1));
        assert_eq!(h.statuses(), vec![200]);
        h.advance(Duration::from_secs(2));
        assert_eq!(h.statuses(), vec![200]);
        h.send(&request("ACK", "c1", "15550100", "ack-c1", 1, Some(&tag), "", "", ""));
        assert!(matches!(h.events().as_slice(), [UasEvent::Confirmed { call: c }] if *c == call));
        h.advance(Duration::from_secs(10));
        assert!(h.sent().is_empty(), "no 200 after the ACK");
    }

    #[test]
    fn answer_carries_sdp_contact_tag_and_rport() {
        let mut h = Harness::new();
        h.send(&invite("c2", "15550100", &offer("8 0 101")));
        let call = match h.events().as_slice() {
            [UasEvent::IncomingCall(c)] => {
                assert_eq!(&*c.tenant_name, "demo");
                assert_eq!(c.to.as_str(), "+15550100");
                assert_eq!(c.from, "+15557770001");
                c.call
            }
            other => panic!("{other:?}"),
        };
        h.sent();
        h.uas.answer(h.now, call, 20002);
        let (ok, dest) = h.sent().remove(0);
        assert_eq!(dest, CALLER.parse().unwrap());
        assert!(ok.contains("Contact: <sip:fairvox@127.0.0.1:5060>"), "{ok}");
        assert!(header(&ok, "Via").unwrap().contains("rport=5099"), "{ok}");
        assert!(ok.contains("m=audio 20002 RTP/AVP 0 101") || ok.contains("m=audio 20002 RTP/AVP 0"), "{ok}");
        assert!(!to_tag(&ok).is_empty());
    }

    #[test]
    fn routing_refusals() {
        let mut h = Harness::new();
        h.send(&invite("n1", "15559999", &offer("0")));
        assert_eq!(h.statuses(), vec![404]);
        h.send(&invite("n2", "alice", &offer("0")));
        assert_eq!(h.statuses(), vec![404]);
        h.send(&invite("n3", "15550100", &offer("18")));
        assert_eq!(h.statuses(), vec![488]);
        h.send(&invite("n4", "15550100", ""));
        assert_eq!(h.statuses(), vec![488]);
        h.send(&invite("n5", "15550100", "garbage"));
        assert_eq!(h.statuses(), vec![400]);
        let refusals: Vec<_> = h
            .events()
            .into_iter()
            .filter_map(|e| match e {
                UasEvent::Refused { refusal, .. } => Some(refusal),
                _ => None,
            })
            .collect();
        assert_eq!(
            refusals,
            vec![Refusal::UnknownNumber, Refusal::UnknownNumber, Refusal::Codec, Refusal::NoOffer, Refusal::BadSdp]
        );
    }

    #[test]
    fn trunk_acl_refuses_other_sources_with_403() {
        let config = Config::from_toml(
            "t",
            "[[tenants]]\nid = \"acme\"\n[[tenants.apps]]\nname = \"e\"\nkind = \"echo\"\n[[tenants.numbers]]\nnumber = \"+15550100\"\napp = \"e\"\n[[tenants.trunks]]\nname = \"c\"\nallowed_sources = [\"10.0.0.0/8\"]\n",
        )
        .unwrap();
        let mut h = Harness::with_config(config);
        h.send(&invite("f1", "15550100", &offer("0")));
        assert_eq!(h.statuses(), vec![403]);
        h.send_from(&invite("f2", "15550100", &offer("0")), "10.1.2.3:5060");
        assert_eq!(h.statuses(), vec![100]);
    }

    #[test]
    fn a_suspended_tenants_number_is_refused_with_403_tenant_suspended() {
        let mut h = Harness::new();
        let mut tenants = h.snapshot.tenants().to_vec();
        tenants[0].suspended = true;
        let numbers = [(E164::parse("+15550100").unwrap(), crate::tenant::Route { tenant: TenantId(0), app: 0 })];
        h.snapshot = Snapshot::new(tenants, numbers.into_iter().collect());
        h.send(&invite("s1", "15550100", &offer("0")));
        let sent = h.sent();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!(sent[0].0.starts_with("SIP/2.0 403 Tenant Suspended\r\n"), "{}", sent[0].0);
        let refused: Vec<_> = h
            .events()
            .into_iter()
            .filter_map(|e| match e {
                UasEvent::Refused { tenant, refusal, new_call, .. } => Some((tenant, refusal, new_call)),
                _ => None,
            })
            .collect();
        assert_eq!(refused, vec![(Some(TenantId(0)), Refusal::Suspended, true)], "charged to the tenant");
        assert_eq!(crate::metrics::RejectReason::from(&Refusal::Suspended).label(), "suspended");
    }

    #[test]
    fn retransmitted_invite_is_absorbed_and_gets_the_last_response() {
        let mut h = Harness::new();
        let inv = invite("r1", "15550100", &offer("0"));
        h.send(&inv);
        assert_eq!(h.events().len(), 1);
        assert_eq!(h.statuses(), vec![100]);
        h.send(&inv);
        assert!(h.events().is_empty(), "a retransmission is not a new call");
        assert_eq!(h.statuses(), vec![100]);
    }

    #[test]
    fn cancel_gets_200_and_the_invite_487() {
        let mut h = Harness::new();
        h.send(&invite("x1", "15550100", &offer("0")));
        let call = match h.events().as_slice() {
            [UasEvent::IncomingCall(c)] => c.call,
            other => panic!("{other:?}"),
        };
        h.sent();
        h.send(&request("CANCEL", "x1", "15550100", "inv-x1", 1, None, "", "", ""));
        let mut statuses = h.statuses();
        statuses.sort();
        assert_eq!(statuses, vec![200, 487]);
        assert!(
            matches!(h.events().as_slice(), [UasEvent::Ended { call: c, reason: SipEnd::Cancelled }] if *c == call)
        );
        // The 487 is retransmitted (Timer G) until the ACK, which stops it.
        h.advance(Duration::from_millis(500));
        assert_eq!(h.statuses(), vec![487]);
        h.send(&request("ACK", "x1", "15550100", "inv-x1", 1, Some("any"), "", "", ""));
        h.advance(Duration::from_secs(40));
        assert!(h.sent().is_empty());
        assert_eq!(h.uas.active_calls(), 0);
        // A CANCEL for nothing: 481.
        h.send(&request("CANCEL", "nope", "15550100", "inv-nope", 1, None, "", "", ""));
        assert_eq!(h.statuses(), vec![481]);
    }

    #[test]
    fn rejected_invite_final_is_retransmitted_until_timer_h() {
        let mut h = Harness::new();
        h.send(&invite("h1", "15559999", &offer("0")));
        assert_eq!(h.statuses(), vec![404]);
        let mut retransmits = 0;
        for _ in 0..40 {
            h.advance(Duration::from_secs(1));
            retransmits += h.statuses().len();
        }
        // T1 doubling to T2 over 64*T1 = 32 s: 0.5, 1.5, 3.5, 7.5, 11.5, ... ~10 retransmissions.
        assert!((8..=12).contains(&retransmits), "{retransmits}");
        assert!(h.uas.is_idle());
    }

    #[test]
    fn caller_bye_ends_the_call_and_unknown_dialogs_get_481() {
        let mut h = Harness::new();
        let (call, tag) = h.answered_call("b1");
        h.send(&request("ACK", "b1", "15550100", "ack-b1", 1, Some(&tag), "", "", ""));
        h.events();
        h.send(&request("BYE", "b1", "15550100", "bye-b1", 2, Some(&tag), "", "", ""));
        assert_eq!(h.statuses(), vec![200]);
        assert!(
            matches!(h.events().as_slice(), [UasEvent::Ended { call: c, reason: SipEnd::CallerBye }] if *c == call)
        );
        h.send(&request("BYE", "b1", "15550100", "bye-b1-again", 3, Some(&tag), "", "", ""));
        assert_eq!(h.statuses(), vec![481]);
        h.send(&request("BYE", "zz", "15550100", "bye-zz", 2, None, "", "", ""));
        assert_eq!(h.statuses(), vec![481]);
    }

    #[test]
    fn our_bye_is_retransmitted_until_answered() {
        let mut h = Harness::new();
        let (call, tag) = h.answered_call("o1");
        h.send(&request("ACK", "o1", "15550100", "ack-o1", 1, Some(&tag), "", "", ""));
        h.events();
        h.uas.hangup(h.now, call);
        let sent = h.sent();
        assert_eq!(sent.len(), 1);
        let bye = &sent[0].0;
        assert!(bye.starts_with("BYE sip:caller@127.0.0.1:5099 SIP/2.0\r\n"), "{bye}");
        assert_eq!(sent[0].1, CALLER.parse().unwrap());
        assert!(header(bye, "From").unwrap().contains(&format!("tag={tag}")));
        assert!(header(bye, "To").unwrap().contains("tag=caller1"));
        assert_eq!(header(bye, "Call-ID"), Some("o1"));
        h.advance(Duration::from_millis(500));
        assert!(h.sent()[0].0.starts_with("BYE "), "Timer E retransmission");
        // The caller answers 200: no more retransmissions.
        let via = header(bye, "Via").unwrap();
        let cseq = header(bye, "CSeq").unwrap();
        let ok = format!(
            "SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: o1\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n",
            header(bye, "From").unwrap(),
            header(bye, "To").unwrap()
        );
        h.send(&ok);
        h.advance(Duration::from_secs(10));
        assert!(h.sent().is_empty());
    }

    #[test]
    fn hangup_before_the_ack_waits_for_it() {
        let mut h = Harness::new();
        let (call, tag) = h.answered_call("w1");
        h.uas.hangup(h.now, call);
        assert!(h.sent().is_empty(), "no BYE before the ACK (RFC 3261 §15)");
        h.send(&request("ACK", "w1", "15550100", "ack-w1", 1, Some(&tag), "", "", ""));
        assert!(h.sent()[0].0.starts_with("BYE "));
    }

    #[test]
    fn unacknowledged_2xx_ends_the_call_with_bye() {
        let mut h = Harness::new();
        let (call, _) = h.answered_call("u1");
        h.advance(Duration::from_secs(33));
        let sent = h.sent();
        assert!(sent.iter().any(|(m, _)| m.starts_with("BYE ")));
        assert!(
            h.events()
                .iter()
                .any(|e| matches!(e, UasEvent::Ended { call: c, reason: SipEnd::AckTimeout } if *c == call))
        );
    }

    #[test]
    fn reinvite_hold_and_resume_mirror_the_direction() {
        let mut h = Harness::new();
        let (call, tag) = h.answered_call("re1");
        h.send(&request("ACK", "re1", "15550100", "ack-re1", 1, Some(&tag), "", "", ""));
        h.events();
        let hold = format!("{}a=sendonly\r\n", offer("0 101"));
        h.send(&request("INVITE", "re1", "15550100", "re1-hold", 2, Some(&tag), "", "application/sdp", &hold));
        let (ok, _) = h.sent().remove(0);
        assert_eq!(status_of(&ok), Some(200));
        assert!(ok.contains("a=recvonly"), "{ok}");
        assert!(ok.contains("m=audio 20000 "), "same port: {ok}");
        assert!(
            matches!(h.events().as_slice(), [UasEvent::MediaUpdate { call: c, negotiated }] if *c == call && negotiated.answer_direction == Direction::RecvOnly)
        );
        h.send(&request("ACK", "re1", "15550100", "ack-re1b", 2, Some(&tag), "", "", ""));
        let resume = offer("0 101");
        h.send(&request("INVITE", "re1", "15550100", "re1-res", 3, Some(&tag), "", "application/sdp", &resume));
        let (ok, _) = h.sent().remove(0);
        assert!(ok.contains("a=sendrecv"), "{ok}");
        // A lower CSeq is out of order.
        h.send(&request("INFO", "re1", "15550100", "re1-old", 1, Some(&tag), "", "", ""));
        assert_eq!(h.statuses(), vec![500]);
    }

    #[test]
    fn info_dtmf_options_and_unsupported_methods() {
        let mut h = Harness::new();
        let (call, tag) = h.answered_call("i1");
        h.send(&request("ACK", "i1", "15550100", "ack-i1", 1, Some(&tag), "", "", ""));
        h.events();
        h.send(&request(
            "INFO",
            "i1",
            "15550100",
            "info1",
            2,
            Some(&tag),
            "",
            "application/dtmf-relay",
            "Signal=7\r\nDuration=160\r\n",
        ));
        assert_eq!(h.statuses(), vec![200]);
        assert!(matches!(h.events().as_slice(), [UasEvent::Dtmf { call: c, digit: '7' }] if *c == call));
        h.send(&request("OPTIONS", "p1", "15550100", "opt1", 1, None, "", "", ""));
        let (ok, _) = h.sent().remove(0);
        assert_eq!(status_of(&ok), Some(200));
        assert_eq!(header(&ok, "Allow"), Some(ALLOW));
        h.send(&request("REGISTER", "g1", "15550100", "reg1", 1, None, "", "", ""));
        let (resp, _) = h.sent().remove(0);
        assert_eq!(status_of(&resp), Some(405));
        assert_eq!(header(&resp, "Allow"), Some(ALLOW));
    }

    #[test]
    fn malformed_request_gets_400_and_the_server_goes_on() {
        let mut h = Harness::new();
        h.send("INVITE sip:15550100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKm1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:15550100@127.0.0.1>\r\nCall-ID: m1\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n");
        let (resp, dest) = h.sent().remove(0);
        assert_eq!(status_of(&resp), Some(400));
        assert_eq!(dest, CALLER.parse().unwrap());
        assert!(matches!(h.events().as_slice(), [UasEvent::Malformed { .. }]));
        h.send("\u{0}\u{1}garbage");
        assert!(h.sent().is_empty());
        h.send(&request("OPTIONS", "p2", "15550100", "opt2", 1, None, "", "", ""));
        assert_eq!(h.statuses(), vec![200]);
        assert_eq!(h.uas.stats.malformed, 2);
    }

    #[test]
    fn node_cap_and_drain_answer_503_with_retry_after() {
        let mut h = Harness::new();
        for i in 0..4 {
            h.send(&invite(&format!("cap{i}"), "15550100", &offer("0")));
        }
        h.sent();
        h.send(&invite("cap4", "15550100", &offer("0")));
        let (resp, _) = h.sent().remove(0);
        assert_eq!(status_of(&resp), Some(503));
        assert_eq!(header(&resp, "Retry-After"), Some("5"));
        let mut h = Harness::new();
        h.uas.start_draining();
        h.send(&invite("d1", "15550100", &offer("0")));
        assert_eq!(h.statuses(), vec![503]);
    }

    #[test]
    fn reject_after_agent_failure_sends_the_status_with_retry_after() {
        let mut h = Harness::new();
        h.send(&invite("a1", "15550100", &offer("0")));
        let call = match h.events().as_slice() {
            [UasEvent::IncomingCall(c)] => c.call,
            other => panic!("{other:?}"),
        };
        h.sent();
        h.uas.reject(h.now, call, 480, "Temporarily Unavailable", Some(30));
        let (resp, _) = h.sent().remove(0);
        assert_eq!(status_of(&resp), Some(480));
        assert_eq!(header(&resp, "Retry-After"), Some("30"));
        assert_eq!(h.uas.active_calls(), 0);
    }

    fn tiny_plan_config() -> Config {
        Config::from_toml(
            "t",
            r#"
[plans.tiny]
weight = 1
max_concurrent_calls = 2
calls_per_second = 1
burst = 3
monthly_minutes = 100

[[tenants]]
id = "a"
plan = "tiny"
[[tenants.apps]]
name = "e"
kind = "echo"
[[tenants.numbers]]
number = "+15550001"
app = "e"

[[tenants]]
id = "b"
plan = "tiny"
[[tenants.apps]]
name = "e"
kind = "echo"
[[tenants.numbers]]
number = "+15550002"
app = "e"
"#,
        )
        .unwrap()
    }

    #[test]
    fn tenant_at_its_cap_gets_486_while_another_tenant_connects() {
        let mut h = Harness::with_config(tiny_plan_config());
        for i in 0..2 {
            h.send(&invite(&format!("a{i}"), "15550001", &offer("0")));
        }
        let events = h.events();
        assert_eq!(h.keep_permits(events).len(), 2);
        assert_eq!(h.statuses(), vec![100, 100]);
        h.send(&invite("a2", "15550001", &offer("0")));
        let (resp, _) = h.sent().remove(0);
        assert_eq!(status_of(&resp), Some(486), "{resp}");
        assert_eq!(header(&resp, "Retry-After"), Some("5"));
        // Tenant b is untouched by a's cap.
        h.send(&invite("b0", "15550002", &offer("0")));
        assert_eq!(h.statuses(), vec![100]);
        // a's calls end: its slots come back.
        h.permits.clear();
        h.advance(Duration::from_secs(2));
        h.sent();
        h.send(&invite("a3", "15550001", &offer("0")));
        assert_eq!(h.statuses(), vec![100]);
    }

    #[test]
    fn burst_over_the_call_rate_gets_503_with_retry_after_from_the_bucket() {
        let mut h = Harness::with_config(tiny_plan_config());
        // Burst 3 at 1 call/s; the cap is 2, so release each permit at once to isolate the rate.
        for i in 0..3 {
            h.send(&invite(&format!("r{i}"), "15550001", &offer("0")));
            let events = h.events();
            h.keep_permits(events);
            h.permits.clear();
        }
        assert_eq!(h.statuses(), vec![100, 100, 100]);
        h.send(&invite("r3", "15550001", &offer("0")));
        let (resp, _) = h.sent().remove(0);
        assert_eq!(status_of(&resp), Some(503), "{resp}");
        assert_eq!(header(&resp, "Retry-After"), Some("1"));
        assert!(
            h.events()
                .iter()
                .any(|e| matches!(e, UasEvent::Refused { refusal: Refusal::Admission(_), status: 503, .. }))
        );
        // A call that did not get in spent no token: after Retry-After it is admitted.
        h.advance(Duration::from_secs(1));
        h.sent();
        h.send(&invite("r4", "15550001", &offer("0")));
        assert_eq!(h.statuses(), vec![100]);
    }

    fn sip_count(m: &Metrics, method: &str, status: &str) -> u64 {
        let prefix = format!("fairvox_sip_messages_total{{method=\"{method}\",status=\"{status}\"}} ");
        m.encode().lines().find_map(|l| l.strip_prefix(prefix.as_str())?.parse().ok()).unwrap_or(0)
    }

    #[test]
    fn sip_messages_in_and_out_are_counted_by_method_and_status() {
        let metrics = Arc::new(Metrics::default());
        let h = Harness::new();
        let mut h = Harness { uas: h.uas.with_metrics(metrics.clone()), ..h };
        let (_, tag) = h.answered_call("m1");
        h.send(&request("ACK", "m1", "15550100", "ack-m1", 1, Some(&tag), "", "", ""));
        h.send(&request("BYE", "m1", "15550100", "bye-m1", 2, Some(&tag), "", "", ""));
        assert_eq!(h.statuses(), vec![200]);
        h.events();
        // A refused INVITE, its 404 retransmitted once (Timer G) and counted again.
        h.send(&invite("m2", "15559999", &offer("0")));
        assert_eq!(h.statuses(), vec![404]);
        h.advance(Duration::from_millis(600));
        assert_eq!(h.statuses(), vec![404]);
        h.send("garbage\r\n\r\n");
        h.sent();
        h.events();
        assert_eq!(sip_count(&metrics, "INVITE", "request"), 2);
        assert_eq!(sip_count(&metrics, "ACK", "request"), 1);
        assert_eq!(sip_count(&metrics, "BYE", "request"), 1);
        assert_eq!(sip_count(&metrics, "INVITE", "100"), 1);
        assert_eq!(sip_count(&metrics, "INVITE", "200"), 1);
        assert_eq!(sip_count(&metrics, "BYE", "200"), 1);
        assert_eq!(sip_count(&metrics, "INVITE", "404"), 2, "retransmissions are counted");
        assert!(metrics.encode().contains("\nfairvox_sip_malformed_total 1\n"));
        // Our own BYE and the caller's answer to it.
        let (call, tag) = h.answered_call("m3");
        h.send(&request("ACK", "m3", "15550100", "ack-m3", 1, Some(&tag), "", "", ""));
        h.uas.hangup(h.now, call);
        let bye = h.sent().remove(0).0;
        let ok = format!(
            "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: m3\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
            header(&bye, "Via").unwrap(),
            header(&bye, "From").unwrap(),
            header(&bye, "To").unwrap(),
            header(&bye, "CSeq").unwrap()
        );
        h.send(&ok);
        assert_eq!(sip_count(&metrics, "BYE", "request"), 2, "the caller's BYE and ours");
        assert_eq!(sip_count(&metrics, "BYE", "200"), 2, "our 200 to the caller's BYE and the caller's to ours");
    }

    #[test]
    fn outgoing_kind_reads_start_line_and_cseq() {
        assert_eq!(
            outgoing_kind(b"SIP/2.0 486 Busy Here\r\nVia: x\r\ncseq:  7   INVITE\r\n\r\n"),
            (SipMethod::Invite, Some(486))
        );
        assert_eq!(outgoing_kind(b"BYE sip:a@b SIP/2.0\r\nCSeq: 2 BYE\r\n\r\n"), (SipMethod::Bye, None));
        assert_eq!(outgoing_kind(b"SIP/2.0 200 OK\r\n\r\nCSeq: 1 BYE\r\n"), (SipMethod::Other, Some(200)));
        assert_eq!(outgoing_kind(b""), (SipMethod::Other, None));
        assert_eq!(outgoing_kind(b"SIP/2.0 2x OK\r\nCSeq: 1 OPTIONS\r\n"), (SipMethod::Options, None));
    }

    #[test]
    fn refusals_say_whether_a_call_was_refused_and_whose() {
        let mut h = Harness::with_config(tiny_plan_config());
        h.send(&invite("u1", "15559999", &offer("0")));
        h.send(&request("BYE", "nd", "15550001", "bye-nd", 2, None, "", "", ""));
        h.send(&invite("c1", "15550001", &offer("18")));
        let refused: Vec<_> = h
            .events()
            .into_iter()
            .filter_map(|e| match e {
                UasEvent::Refused { tenant, refusal, new_call, sip_call_id, .. } => {
                    Some((tenant, refusal, new_call, sip_call_id))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            refused,
            vec![
                (None, Refusal::UnknownNumber, true, "u1".to_owned()),
                (None, Refusal::NoDialog, false, "nd".to_owned()),
                (Some(TenantId(0)), Refusal::Codec, true, "c1".to_owned()),
            ]
        );
        // Overload is refused before routing but charged to the tenant whose number was called.
        h.uas.start_draining();
        h.send(&invite("o1", "15550002", &offer("0")));
        h.send(&invite("o2", "15559999", &offer("0")));
        let overload: Vec<_> = h
            .events()
            .into_iter()
            .filter_map(|e| match e {
                UasEvent::Refused { tenant, refusal: Refusal::Overload, new_call: true, .. } => Some(tenant),
                _ => None,
            })
            .collect();
        assert_eq!(overload, vec![Some(TenantId(1)), None]);
    }

    #[test]
    fn refused_routing_spends_no_admission() {
        let mut h = Harness::with_config(tiny_plan_config());
        for i in 0..5 {
            h.send(&invite(&format!("g{i}"), "15550001", &offer("18")));
        }
        assert_eq!(h.statuses(), vec![488; 5]);
        h.send(&invite("ok", "15550001", &offer("0")));
        assert_eq!(h.statuses(), vec![100], "488s took no rate tokens");
    }
}
