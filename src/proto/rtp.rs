//! RTP (RFC 3550) headers: zero-copy parse, header writing, and receive statistics (loss, reordering, jitter).
