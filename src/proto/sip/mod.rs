//! SIP (RFC 3261), sans-IO: the message facade (parse and serialise) and the server transaction and dialog layer.
