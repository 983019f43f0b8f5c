//! RFC 4733 telephone-event payloads: parse, and a detector that reports each digit once.
