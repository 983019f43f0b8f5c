//! Wiring: builds the routing snapshot, starts the SIP, RTP and HTTP drivers, and drains on shutdown.
