//! SIP (RFC 3261), sans-IO: the message facade (parse and serialise) and the server transaction and dialog layer.
//!
//! # The message facade (this module and its files other than `transaction.rs` / `dialog.rs`)
//!
//! Owns turning bytes into typed SIP messages and typed messages back into bytes, with no I/O, clock or RNG:
//!
//! * [`parse_message`]: one UDP datagram (or one framed stream message) to a [`Request`] or [`Response`] with
//!   typed views of the headers a UAS needs (Via, From, To, Call-ID, CSeq, Max-Forwards, Contact,
//!   Record-Route, Content-Type), every header kept in order with its canonical name.
//! * [`frame_stream`]: RFC 3261 §18.3 framing of a TCP/TLS byte stream (CRLF keep-alives, Content-Length).
//! * [`ParseError`]: a typed, `#[non_exhaustive]` error kind with a stable metric label, plus what could be
//!   salvaged of the message ([`ErrorContext`]) so that [`error_response`] can answer a malformed request with
//!   400 (505 for a SIP version other than 2.0, 513 for an oversized message) when enough survives.
//! * [`check_request`]: the RFC 3261 §8.2 UAS checks that need only the parsed request (416, 420, 415, 483).
//! * [`OutgoingResponse`] / [`OutgoingRequest`]: serialisation of what we send, always with Content-Length.
//!
//! Nothing from the network can make it panic: no `unwrap`, `expect` or unchecked indexing on input.
//!
//! ## Where ezk-sip-types is used, and where our own code takes over
//!
//! `ezk-sip-types` does the grammar that it gets right:
//!
//! * `SipUri` validates every `sip:`/`sips:` URI (user and password character sets, `hostport` with IPv6
//!   references and port range, URI parameter and header character sets).
//! * `HostPort` parses the Via `sent-by` (IPv4, IPv6 reference, host name, port range).
//!
//! Our own code does the rest, because ezk, checked against RFC 4475, is too lenient or too strict there:
//!
//! * **Message framing, start line, header lines, folding, compact forms**: ezk's line splitter and start-line
//!   parsers skip the checks RFC 4475 needs: the Request-Line must be exactly three SP-separated parts
//!   (lwsstart, trws, lwsruri), an unknown SIP version must be told apart from garbage so it gets a 505
//!   (badvers), the status code must be three digits (bigcode: ezk's status code is any u16), and
//!   duplicate single-valued headers must be caught (multi01, mcl01).
//! * **Methods and CSeq**: ezk matches method names case-insensitively and by prefix (`INVITEX` is INVITE);
//!   RFC 3261 §7.1 says methods are case-sensitive, and intmeth/esc02 need arbitrary extension methods.
//! * **Display names and name-addr** (From, To, Contact, Record-Route): ezk's quoted-string lexer does not
//!   accept the `\\` quoted-pair (wsinv) or escaped control characters (intmeth), and its unquoted display
//!   names accept any text, including `Bell, Alexander` (baddn) and an unterminated quote (quotbal). It also
//!   only knows `sip:`/`sips:`, while From/To/Contact may carry any scheme (unksm2: `isbn:`, `http:`).
//! * **Via parameters**: ezk percent-decodes Via parameter values, so `branch=z9hG4bK-.!%66*` (intmeth) would
//!   become `...!f*`, breaking transaction matching and the Via we echo; and it accepts the empty parameters
//!   `;;,;,,` of badinv01. We keep values exactly as received.
//! * **URI components**: ezk's parameter list can't be iterated in order and decodes into UTF-8 only, so the
//!   user part and parameters we expose are cut from the raw text by our code after ezk has validated it. One
//!   known strictness comes with ezk's validation: a `sip:` URI whose escaped user or parameter is not UTF-8
//!   once decoded (`sip:%FF@host`) is rejected. `tel:` and other schemes are ours entirely.
//!
//! ezk types never appear in this module's public API.
//!
//! ## RFC 4475 decisions
//!
//! Where RFC 4475 lets an element choose, we choose as follows (the test table in `tests.rs` pins each file):
//! lwsstart, trws (extra SP in the Request-Line) and badaspec (spaces inside `<>`) are rejected with 400
//! rather than tolerated; baddate is accepted (we never interpret Date); regbadct (`?` in an `addr-spec`
//! Contact) is rejected; badbranch (`branch=z9hG4bK`) parses, and [`Via::has_rfc3261_branch`] is false for
//! it so the transaction layer falls back to RFC 2543 matching; scalar02 is rejected for its CSeq (the
//! first check to fail; its Max-Forwards of 300 is also rejected, range 0-255); insuf gets no answer
//! because no From/To/Call-ID survive to build one; a datagram whose head is not ended by an empty line
//! (baddn) has its head end at the end of the datagram. Bare LF line ends are tolerated.
//!
//! Two leniencies beyond RFC 4475, for carrier interop: header values that are not UTF-8 are decoded
//! lossily (U+FFFD) instead of failing the message (a Latin-1 display name must not fail a call), and an
//! unquoted display name may contain non-ASCII letters (`José <sip:...>`); separators in it (baddn) are still
//! rejected.

mod check;
mod error;
mod grammar;
mod header;
mod message;
mod outgoing;
mod uri;

pub mod dialog;
pub mod transaction;

#[cfg(test)]
mod tests;

pub use check::{Rejection, check_request};
pub use error::{ErrorContext, ParseError, ParseErrorKind, error_response};
pub use header::{CSeq, Header, Via, canonical_name};
pub use message::{Framed, Limits, Message, Request, Response, frame_stream, parse_message};
pub use outgoing::{OutgoingRequest, OutgoingResponse};
pub use uri::{Method, NameAddr, Scheme, Uri};
