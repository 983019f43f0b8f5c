//! RTCP (RFC 3550): compound receiver/sender reports with SDES, and parsing of what the peer sends.
