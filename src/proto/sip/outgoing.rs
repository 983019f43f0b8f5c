//! Serialising the messages we send: responses to requests (RFC 3261 §8.2.6) and the requests a UAS
//! originates inside a dialog (BYE). Every message is written with a Content-Length.
//!
//! Header names, values and reason phrases given by callers are written on one line: any CR or LF in them is
//! replaced by a space, so a value can never inject a header.

use bytes::Bytes;

use super::error::one_line;
use super::message::Request;
use super::uri::Method;

/// A response being built. Construct with [`OutgoingResponse::for_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingResponse {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Option<(String, Bytes)>,
    /// Index in `headers` of the To header and whether it already has a tag.
    to: Option<(usize, bool)>,
}

impl OutgoingResponse {
    /// Copies every Via (each rendered with [`super::Via::render`], so `received`/`rport` set on `req.via[0]`
    /// appear), From, To, Call-ID and CSeq from the request (RFC 3261 §8.2.6.2). From and To are copied as
    /// received; CSeq is written as `seq METHOD`.
    pub fn for_request(req: &Request, status: u16, reason: &str) -> OutgoingResponse {
        let mut headers = Vec::with_capacity(req.via.len() + 8);
        for v in &req.via {
            headers.push(("Via".to_owned(), v.render()));
        }
        headers.push(("From".to_owned(), req.from.raw.clone()));
        let to_index = headers.len();
        headers.push(("To".to_owned(), req.to.raw.clone()));
        headers.push(("Call-ID".to_owned(), req.call_id.clone()));
        headers.push(("CSeq".to_owned(), req.cseq.to_string()));
        OutgoingResponse {
            status,
            reason: reason.to_owned(),
            headers,
            body: None,
            to: Some((to_index, req.to.tag().is_some())),
        }
    }

    /// Adds `;tag=` to To if the request's To had none (RFC 3261 §8.2.6.2); otherwise leaves To alone.
    pub fn to_tag(mut self, tag: &str) -> Self {
        if let Some((i, false)) = self.to
            && let Some((_, value)) = self.headers.get_mut(i)
        {
            value.push_str(";tag=");
            value.push_str(tag);
            self.to = Some((i, true));
        }
        self
    }

    /// Copies the request's Record-Route values, in order, as RFC 3261 §12.1.1 requires for responses that
    /// establish a dialog (1xx other than 100, and 2xx, to INVITE).
    pub fn record_route_from(mut self, req: &Request) -> Self {
        for rr in req.headers_named("Record-Route") {
            self.headers.push(("Record-Route".to_owned(), rr.to_owned()));
        }
        self
    }

    /// Appends a header. Content-Length is always written by [`OutgoingResponse::to_bytes`]; don't add it.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Sets the body and its Content-Type.
    pub fn body(mut self, content_type: &str, body: Bytes) -> Self {
        self.body = Some((content_type.to_owned(), body));
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Headers as they will be written (without Content-Type and Content-Length, which come from the body).
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The To header value as it will be written (with the tag added by [`OutgoingResponse::to_tag`]).
    pub fn to_header(&self) -> Option<&str> {
        self.to.and_then(|(i, _)| self.headers.get(i)).map(|(_, v)| v.as_str())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(512);
        out.push_str("SIP/2.0 ");
        out.push_str(&self.status.to_string());
        out.push(' ');
        out.push_str(&one_line(&self.reason));
        out.push_str("\r\n");
        write_tail(out, &self.headers, self.body.as_ref())
    }
}

/// Writes the headers, Content-Type/Content-Length and body after a start line.
fn write_tail(mut out: String, headers: &[(String, String)], body: Option<&(String, Bytes)>) -> Vec<u8> {
    for (n, v) in headers {
        if n.eq_ignore_ascii_case("Content-Length") || n.eq_ignore_ascii_case("l") {
            continue;
        }
        out.push_str(&one_line(n));
        out.push_str(": ");
        out.push_str(&one_line(v));
        out.push_str("\r\n");
    }
    let len = body.map_or(0, |(_, b)| b.len());
    if let Some((ct, _)) = body {
        out.push_str("Content-Type: ");
        out.push_str(&one_line(ct));
        out.push_str("\r\n");
    }
    out.push_str("Content-Length: ");
    out.push_str(&len.to_string());
    out.push_str("\r\n\r\n");
    let mut bytes = out.into_bytes();
    if let Some((_, b)) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}

/// A request we originate (e.g. BYE from the UAS side of a dialog). `headers` are written in order; the caller
/// supplies Via, Max-Forwards, From, To, Call-ID, CSeq, Route as the dialog dictates. Content-Type and
/// Content-Length come from `body`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingRequest {
    pub method: Method,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<(String, Bytes)>,
}

impl OutgoingRequest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(512);
        out.push_str(self.method.as_str());
        out.push(' ');
        out.push_str(&one_line(&self.uri).replace(' ', "%20"));
        out.push_str(" SIP/2.0\r\n");
        write_tail(out, &self.headers, self.body.as_ref())
    }
}
