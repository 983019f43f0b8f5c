//! Provider-stream clients: the WebSocket to each tenant agent, and the built-in echo app.
