//! Provider-stream clients: the WebSocket to each tenant agent (and the outbox that owns a plain socket's write
//! side), and the built-in echo app.

pub mod echo;
pub mod outbox;
pub mod provider;

pub use echo::spawn_echo;
pub use outbox::Outbox;
pub use provider::{
    AgentSink, CloseReason, ConnectError, FromAgent, ProviderHandle, ProviderSocket, ProviderStats, ToAgent, connect,
};
