//! Provider-stream clients: the WebSocket to each tenant agent, and the built-in echo app.

pub mod echo;
pub mod provider;

pub use echo::spawn_echo;
pub use provider::{
    CloseReason, ConnectError, FromAgent, ProviderHandle, ProviderSocket, ProviderStats, ToAgent, connect,
};
