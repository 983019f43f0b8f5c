//! The Twilio Media Streams JSON protocol, sans-IO: writes server messages into reusable buffers, parses agent messages.
