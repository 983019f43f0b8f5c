//! fairvox: a real-time audio media server for multi-tenant voice AI.
//!
//! Carriers send SIP calls in; each call's audio is re-framed into 20 ms µ-law frames that carry their tenant and
//! are streamed to the tenant's agent over a WebSocket speaking the Twilio Media Streams protocol, and the agent's
//! audio is paced back to the caller. See `docs/architecture.md` for the path of a frame and the module map.

pub mod api;
pub mod call;
pub mod cli;
pub mod codec;
pub mod config;
pub mod fuzzing;
pub mod logging;
pub mod metrics;
pub mod proto;
pub mod sched;
pub mod server;
pub mod store;
pub mod stream;
pub mod tenant;
pub mod transport;
