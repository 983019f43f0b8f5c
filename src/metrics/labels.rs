//! Typed label sets and label values.
//!
//! Every family has its own label struct, so a series can only be made with the labels its family declares, and
//! every label value other than a tenant or app name is a closed enum or a `&'static str` taken from another
//! module's `label()`: no value can come from the network. Values that are names (tenant, app) are `Arc<str>`, so
//! building a label set clones a pointer, never a string.

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::call::uas;
use crate::proto::sip::Method;
use crate::sched::{admission, wfq};

/// The `tenant` label value of calls that belong to no known tenant (unknown number, forbidden source, malformed).
pub const UNATTRIBUTED: &str = "unattributed";
/// The `tenant` label value that tenants beyond `metrics.max_tenants` are folded into.
pub const OTHER: &str = "other";

/// The value of a `tenant` label: a tenant's public name, or [`UNATTRIBUTED`] / [`OTHER`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TenantLabel(pub(crate) Arc<str>);

impl EncodeLabelValue for TenantLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        // Escapes `\`, `"` and newline.
        encoder.write_str(&self.0)
    }
}

/// Which way a frame travels: `inbound` is caller -> agent (RTP in, WebSocket out), `outbound` is agent -> caller.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Inbound, Direction::Outbound];

    pub fn label(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.label())
    }
}

/// Why a frame was dropped (`fairvox_frames_dropped_total{reason}`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum FrameDropReason {
    /// It waited in the fair queue longer than its tenant's `max_wait` ([`wfq::DropReason::Deadline`]).
    Deadline,
    /// Its tenant's queue was full ([`wfq::DropReason::QueueFull`]).
    QueueFull,
    /// Beyond the call's negotiated media rate (`call::police`).
    Policed,
    /// The agent's channel was full: the agent (or its connection) does not keep up.
    SlowConsumer,
    /// Still queued when its tenant was removed or the node shut down ([`wfq::DropReason::Drained`]).
    Drained,
}

impl FrameDropReason {
    pub const ALL: [FrameDropReason; 5] = [
        FrameDropReason::Deadline,
        FrameDropReason::QueueFull,
        FrameDropReason::Policed,
        FrameDropReason::SlowConsumer,
        FrameDropReason::Drained,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FrameDropReason::Deadline => "deadline",
            FrameDropReason::QueueFull => "queue_full",
            FrameDropReason::Policed => "policed",
            FrameDropReason::SlowConsumer => "slow_consumer",
            FrameDropReason::Drained => "drained",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl From<wfq::DropReason> for FrameDropReason {
    fn from(r: wfq::DropReason) -> FrameDropReason {
        match r {
            wfq::DropReason::Deadline => FrameDropReason::Deadline,
            wfq::DropReason::QueueFull => FrameDropReason::QueueFull,
            wfq::DropReason::Drained => FrameDropReason::Drained,
        }
    }
}

impl EncodeLabelValue for FrameDropReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.label())
    }
}

/// Why an INVITE was refused (`fairvox_calls_rejected_total{reason}`). The labels are those of
/// [`uas::Refusal::label`] and [`admission::Refusal::label`], plus `suspended` for a suspended tenant.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The tenant's call-rate bucket was empty.
    Rate,
    /// The tenant held its `max_concurrent_calls`.
    Concurrency,
    /// The tenant's monthly minutes were used up.
    Budget,
    /// The node was at its call limit (or draining).
    Overload,
    /// No tenant has the called number (counted under `tenant="unattributed"`).
    UnknownNumber,
    /// The source address is not on the tenant's trunks (counted under `tenant="unattributed"`).
    Forbidden,
    /// No codec in common.
    Codec,
    /// The circuit breaker of the tenant's app was open: its agent keeps failing.
    ProviderUnavailable,
    /// The tenant is suspended or being offboarded (403 `Tenant Suspended`).
    Suspended,
    /// The SDP offer did not parse.
    BadSdp,
    /// The INVITE carried no SDP offer.
    NoOffer,
    /// The method is not supported.
    Unsupported,
    /// An in-dialog request matched no dialog.
    NoDialog,
    /// The tenant has no plan (an integration bug).
    Unconfigured,
}

impl RejectReason {
    pub const ALL: [RejectReason; 14] = [
        RejectReason::Rate,
        RejectReason::Concurrency,
        RejectReason::Budget,
        RejectReason::Overload,
        RejectReason::UnknownNumber,
        RejectReason::Forbidden,
        RejectReason::Codec,
        RejectReason::ProviderUnavailable,
        RejectReason::Suspended,
        RejectReason::BadSdp,
        RejectReason::NoOffer,
        RejectReason::Unsupported,
        RejectReason::NoDialog,
        RejectReason::Unconfigured,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Rate => "rate",
            RejectReason::Concurrency => "concurrency",
            RejectReason::Budget => "budget",
            RejectReason::Overload => "overload",
            RejectReason::UnknownNumber => "unknown_number",
            RejectReason::Forbidden => "forbidden",
            RejectReason::Codec => "codec",
            RejectReason::ProviderUnavailable => "provider_unavailable",
            RejectReason::Suspended => "suspended",
            RejectReason::BadSdp => "bad_sdp",
            RejectReason::NoOffer => "no_offer",
            RejectReason::Unsupported => "unsupported",
            RejectReason::NoDialog => "no_dialog",
            RejectReason::Unconfigured => "unconfigured",
        }
    }
}

impl From<&admission::Refusal> for RejectReason {
    fn from(r: &admission::Refusal) -> RejectReason {
        match r {
            admission::Refusal::Rate { .. } => RejectReason::Rate,
            admission::Refusal::Concurrency { .. } => RejectReason::Concurrency,
            admission::Refusal::Budget => RejectReason::Budget,
            admission::Refusal::NodeOverload { .. } => RejectReason::Overload,
            admission::Refusal::CircuitOpen { .. } => RejectReason::ProviderUnavailable,
            admission::Refusal::Unconfigured => RejectReason::Unconfigured,
        }
    }
}

impl From<&uas::Refusal> for RejectReason {
    fn from(r: &uas::Refusal) -> RejectReason {
        match r {
            uas::Refusal::UnknownNumber => RejectReason::UnknownNumber,
            uas::Refusal::Forbidden => RejectReason::Forbidden,
            uas::Refusal::Codec => RejectReason::Codec,
            uas::Refusal::BadSdp => RejectReason::BadSdp,
            uas::Refusal::NoOffer => RejectReason::NoOffer,
            uas::Refusal::Overload => RejectReason::Overload,
            uas::Refusal::Unsupported => RejectReason::Unsupported,
            uas::Refusal::NoDialog => RejectReason::NoDialog,
            uas::Refusal::Suspended => RejectReason::Suspended,
            uas::Refusal::Admission(a) => RejectReason::from(a),
        }
    }
}

impl EncodeLabelValue for RejectReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.label())
    }
}

/// The `method` label of `fairvox_sip_messages_total`: the methods of RFC 3261 and its common extensions, and
/// `OTHER` for any extension method, so that a peer cannot mint label values.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum SipMethod {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Info,
    Register,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Other,
}

impl SipMethod {
    /// Maps a method name, case-sensitively as RFC 3261 compares them; anything unknown is [`SipMethod::Other`].
    pub fn from_name(name: &str) -> SipMethod {
        match name {
            "INVITE" => SipMethod::Invite,
            "ACK" => SipMethod::Ack,
            "BYE" => SipMethod::Bye,
            "CANCEL" => SipMethod::Cancel,
            "OPTIONS" => SipMethod::Options,
            "INFO" => SipMethod::Info,
            "REGISTER" => SipMethod::Register,
            "UPDATE" => SipMethod::Update,
            "PRACK" => SipMethod::Prack,
            "SUBSCRIBE" => SipMethod::Subscribe,
            "NOTIFY" => SipMethod::Notify,
            "REFER" => SipMethod::Refer,
            "MESSAGE" => SipMethod::Message,
            "PUBLISH" => SipMethod::Publish,
            _ => SipMethod::Other,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SipMethod::Invite => "INVITE",
            SipMethod::Ack => "ACK",
            SipMethod::Bye => "BYE",
            SipMethod::Cancel => "CANCEL",
            SipMethod::Options => "OPTIONS",
            SipMethod::Info => "INFO",
            SipMethod::Register => "REGISTER",
            SipMethod::Update => "UPDATE",
            SipMethod::Prack => "PRACK",
            SipMethod::Subscribe => "SUBSCRIBE",
            SipMethod::Notify => "NOTIFY",
            SipMethod::Refer => "REFER",
            SipMethod::Message => "MESSAGE",
            SipMethod::Publish => "PUBLISH",
            SipMethod::Other => "OTHER",
        }
    }
}

impl From<&Method> for SipMethod {
    fn from(m: &Method) -> SipMethod {
        match m {
            Method::Invite => SipMethod::Invite,
            Method::Ack => SipMethod::Ack,
            Method::Bye => SipMethod::Bye,
            Method::Cancel => SipMethod::Cancel,
            Method::Options => SipMethod::Options,
            Method::Info => SipMethod::Info,
            Method::Register => SipMethod::Register,
            Method::Update => SipMethod::Update,
            Method::Prack => SipMethod::Prack,
            Method::Subscribe => SipMethod::Subscribe,
            Method::Notify => SipMethod::Notify,
            Method::Refer => SipMethod::Refer,
            Method::Message => SipMethod::Message,
            Method::Publish => SipMethod::Publish,
            Method::Extension(_) => SipMethod::Other,
        }
    }
}

impl EncodeLabelValue for SipMethod {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.label())
    }
}

/// The `status` label of `fairvox_sip_messages_total`: `request` for a request, the three-digit code for a
/// response, `other` for a code outside 100..=699 (which the parser should never let through).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum SipStatus {
    Request,
    Code(u16),
    Other,
}

impl SipStatus {
    pub(crate) fn new(status: Option<u16>) -> SipStatus {
        match status {
            None => SipStatus::Request,
            Some(code @ 100..=699) => SipStatus::Code(code),
            Some(_) => SipStatus::Other,
        }
    }
}

impl EncodeLabelValue for SipStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        match self {
            SipStatus::Request => encoder.write_str("request"),
            // Formatting a u16 into the writer: no allocation.
            SipStatus::Code(code) => write!(encoder, "{code}"),
            SipStatus::Other => encoder.write_str("other"),
        }
    }
}

// Label sets, one per family shape. Field order is label order in the output.

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct TenantLabels {
    pub(crate) tenant: TenantLabel,
}

/// What became of a call record on its way to the store (`fairvox_call_records_total{result}`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RecordResultLabels {
    /// `written`, `duplicate`, `failed` or `dropped` (`api::sink`).
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct TenantDirection {
    pub(crate) tenant: TenantLabel,
    pub(crate) direction: Direction,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct TenantOutcome {
    pub(crate) tenant: TenantLabel,
    /// An [`crate::call::record::EndReason::label`].
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct TenantReject {
    pub(crate) tenant: TenantLabel,
    pub(crate) reason: RejectReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct TenantDrop {
    pub(crate) tenant: TenantLabel,
    pub(crate) reason: FrameDropReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct TenantKind {
    pub(crate) tenant: TenantLabel,
    /// A `label()` of the provider stream's error types (`ConnectError`, `AgentMessageError`, ...).
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct TenantApp {
    pub(crate) tenant: TenantLabel,
    pub(crate) app: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct SipLabels {
    pub(crate) method: SipMethod,
    pub(crate) status: SipStatus,
}
