//! SDP offer/answer (RFC 3264/4566) for audio: parse an offer, negotiate a codec, write the answer.
