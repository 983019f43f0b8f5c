//! The UAS side of a SIP dialog (RFC 3261 §12): its identity, route set, CSeq spaces, and the requests we send
//! inside it (BYE). Sans-IO: the caller supplies branches and addresses.

use std::net::{IpAddr, SocketAddr};

use super::transaction::{Peer, Transport};
use super::{Method, OutgoingRequest, Request};

/// Dialog identity as seen by the UAS: Call-ID, our (To) tag, their (From) tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DialogKey {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
}

impl DialogKey {
    /// The key an in-dialog request names (To tag is ours, From tag is theirs).
    pub fn of_request(req: &Request) -> Option<DialogKey> {
        Some(DialogKey {
            call_id: req.call_id.clone(),
            local_tag: req.to.tag()?.to_owned(),
            remote_tag: req.from.tag().unwrap_or("").to_owned(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct Dialog {
    pub key: DialogKey,
    /// Our URI and their URI, as they appeared in the INVITE's To and From (without tags).
    local_uri: String,
    remote_uri: String,
    /// The INVITE's From header value as received (it carries the remote tag).
    remote_from_raw: String,
    /// Contact of the INVITE: where in-dialog requests go.
    remote_target: String,
    remote_target_addr: Option<SocketAddr>,
    /// Record-Route values of the INVITE, in order (§12.1.1).
    route_set: Vec<String>,
    first_route_addr: Option<SocketAddr>,
    first_route_loose: bool,
    local_cseq: u32,
    remote_cseq: u32,
    /// Where the INVITE came from: the fallback destination, and the TCP connection to reuse.
    origin: Peer,
}

/// The result of checking an in-dialog request's CSeq (§12.2.2).
#[derive(Debug, PartialEq, Eq)]
pub enum CSeqCheck {
    Ok,
    /// Lower than one already seen: answer 500.
    OutOfOrder,
}

impl Dialog {
    /// The dialog created by our 2xx to `invite`.
    pub fn new_uas(invite: &Request, local_tag: String, origin: Peer, local_cseq: u32) -> Dialog {
        let contact = invite.contact.first();
        let remote_target = contact.map(|c| c.uri.raw.clone()).unwrap_or_else(|| invite.from.uri.raw.clone());
        let remote_target_addr = contact.and_then(|c| uri_addr(&c.uri.host, c.uri.port));
        let route_set: Vec<String> = invite.record_route.iter().map(|r| r.raw.clone()).collect();
        let first = invite.record_route.first();
        Dialog {
            key: DialogKey {
                call_id: invite.call_id.clone(),
                local_tag,
                remote_tag: invite.from.tag().unwrap_or("").to_owned(),
            },
            local_uri: invite.to.uri.raw.clone(),
            remote_uri: invite.from.uri.raw.clone(),
            remote_from_raw: invite.from.raw.clone(),
            remote_target,
            remote_target_addr,
            route_set,
            first_route_addr: first.and_then(|r| uri_addr(&r.uri.host, r.uri.port)),
            first_route_loose: first.is_some_and(|r| r.uri.params.iter().any(|(k, _)| k.eq_ignore_ascii_case("lr"))),
            local_cseq,
            remote_cseq: invite.cseq.seq,
            origin,
        }
    }

    /// Where the dialog's INVITE came from.
    pub fn origin(&self) -> Peer {
        self.origin
    }

    pub fn remote_uri(&self) -> &str {
        &self.remote_uri
    }

    /// Records an in-dialog request's CSeq.
    pub fn check_remote_cseq(&mut self, seq: u32, method: &Method) -> CSeqCheck {
        // ACK and CANCEL reuse the CSeq of the request they belong to.
        if matches!(method, Method::Ack | Method::Cancel) {
            return CSeqCheck::Ok;
        }
        if seq < self.remote_cseq {
            return CSeqCheck::OutOfOrder;
        }
        self.remote_cseq = seq;
        CSeqCheck::Ok
    }

    /// Builds a request inside the dialog (§12.2.1.1) and where to send it. `local` is our SIP address for Via;
    /// `branch` must start with the magic cookie.
    pub fn request(&mut self, method: Method, local: SocketAddr, branch: &str) -> (OutgoingRequest, Peer) {
        self.local_cseq += 1;
        let (uri, routes): (String, Vec<String>) = if self.route_set.is_empty() || self.first_route_loose {
            (strip_angle(&self.remote_target).to_owned(), self.route_set.clone())
        } else {
            // Strict router: it goes into the Request-URI, the remote target to the end of the Route set.
            let mut rest: Vec<String> = self.route_set[1..].to_vec();
            rest.push(format!("<{}>", strip_angle(&self.remote_target)));
            (strip_angle(route_uri(&self.route_set[0])).to_owned(), rest)
        };
        let dest_addr = match (self.route_set.is_empty(), self.first_route_addr, self.remote_target_addr) {
            (false, Some(a), _) => a,
            (true, _, Some(a)) => a,
            _ => self.origin.addr,
        };
        // Over TCP we reuse the connection the INVITE came on (the carrier's SBC keeps it for the dialog).
        let dest = match self.origin.transport {
            Transport::Tcp { .. } => self.origin,
            Transport::Udp => Peer { addr: dest_addr, transport: Transport::Udp },
        };
        let mut headers = Vec::with_capacity(8 + routes.len());
        headers.push((
            "Via".to_owned(),
            format!("SIP/2.0/{} {};branch={};rport", dest.transport.via_name(), host_port(local), branch),
        ));
        headers.push(("Max-Forwards".to_owned(), "70".to_owned()));
        for r in routes {
            headers.push(("Route".to_owned(), r));
        }
        headers.push(("From".to_owned(), format!("{};tag={}", name_addr(&self.local_uri), self.key.local_tag)));
        headers.push(("To".to_owned(), self.remote_from_raw.clone()));
        headers.push(("Call-ID".to_owned(), self.key.call_id.clone()));
        headers.push(("CSeq".to_owned(), format!("{} {}", self.local_cseq, method.as_str())));
        (OutgoingRequest { method, uri, headers, body: None }, dest)
    }
}

/// `host:port` for a Via or Contact, with IPv6 in brackets.
pub fn host_port(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
    }
}

fn name_addr(uri: &str) -> String {
    let u = strip_angle(uri);
    format!("<{u}>")
}

fn strip_angle(s: &str) -> &str {
    let t = s.trim();
    t.strip_prefix('<').and_then(|x| x.strip_suffix('>')).unwrap_or(t)
}

/// The URI inside a Record-Route value (`"name" <sip:...;lr>;param`).
fn route_uri(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value,
    }
}

/// A numeric host (no DNS in a sans-IO layer) with its port, or the SIP default (TLS is not offered, so 5060).
fn uri_addr(host: &str, port: Option<u16>) -> Option<SocketAddr> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = h.parse().ok()?;
    Some(SocketAddr::new(ip, port.unwrap_or(5060)))
}
