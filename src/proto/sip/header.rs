//! Header fields: canonical names (compact forms expanded), and the typed values every UAS needs — Via, CSeq,
//! Content-Type, Max-Forwards, Content-Length.
//!
//! The Via `sent-by` host and port are parsed by `ezk_sip_types::host::HostPort` (IPv4, IPv6 references,
//! host names, port range). The rest of Via is ours: ezk's Via parser percent-decodes parameter values
//! (`branch=z9hG4bK-.!%66` would become `...!f`, breaking transaction matching and the Via we echo) and
//! accepts empty parameters (`;;,;,,`, RFC 4475 badinv01). CSeq is ours because ezk's method matching is
//! case-insensitive and prefix-based (`INVITEX` parses as INVITE).

use std::net::IpAddr;
use std::str::FromStr;

use super::grammar::{find_param, is_token, is_token_byte, is_ws, parse_params, trim_ws, trim_ws_start};
use super::uri::Method;

/// One header field as received: `name` is the canonical full name (compact forms expanded, known names in
/// their canonical capitalisation, unknown names as received); `value` is unfolded and trimmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// Compact forms (RFC 3261 §7.3.3 and the IANA registry).
fn compact(c: u8) -> Option<&'static str> {
    Some(match c.to_ascii_lowercase() {
        b'a' => "Accept-Contact",
        b'b' => "Referred-By",
        b'c' => "Content-Type",
        b'd' => "Request-Disposition",
        b'e' => "Content-Encoding",
        b'f' => "From",
        b'i' => "Call-ID",
        b'j' => "Reject-Contact",
        b'k' => "Supported",
        b'l' => "Content-Length",
        b'm' => "Contact",
        b'n' => "Identity-Info",
        b'o' => "Event",
        b'r' => "Refer-To",
        b's' => "Subject",
        b't' => "To",
        b'u' => "Allow-Events",
        b'v' => "Via",
        b'x' => "Session-Expires",
        b'y' => "Identity",
        _ => return None,
    })
}

/// Known header names in canonical capitalisation.
const KNOWN: &[&str] = &[
    "Via",
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Contact",
    "Max-Forwards",
    "Content-Length",
    "Content-Type",
    "Record-Route",
    "Route",
    "Require",
    "Proxy-Require",
    "Supported",
    "Unsupported",
    "Allow",
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Accept-Contact",
    "Alert-Info",
    "Allow-Events",
    "Authentication-Info",
    "Authorization",
    "Call-Info",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Transfer-Encoding",
    "Date",
    "Diversion",
    "Error-Info",
    "Event",
    "Expires",
    "History-Info",
    "Identity",
    "Identity-Info",
    "In-Reply-To",
    "Min-Expires",
    "Min-SE",
    "MIME-Version",
    "Organization",
    "P-Asserted-Identity",
    "P-Charging-Vector",
    "P-Preferred-Identity",
    "Path",
    "Priority",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "RAck",
    "Reason",
    "Refer-To",
    "Referred-By",
    "Reject-Contact",
    "Remote-Party-ID",
    "Replaces",
    "Reply-To",
    "Request-Disposition",
    "Retry-After",
    "RSeq",
    "Server",
    "Service-Route",
    "Session-Expires",
    "SIP-ETag",
    "SIP-If-Match",
    "Subject",
    "Subscription-State",
    "Timestamp",
    "User-Agent",
    "Warning",
    "WWW-Authenticate",
];

/// Canonical form of a header name: compact forms expanded, known names capitalised canonically, anything
/// else returned as given.
pub fn canonical_name(name: &str) -> std::borrow::Cow<'_, str> {
    if let [c] = name.as_bytes()
        && let Some(full) = compact(*c)
    {
        return full.into();
    }
    match KNOWN.iter().find(|k| k.eq_ignore_ascii_case(name)) {
        Some(k) => (*k).into(),
        None => name.into(),
    }
}

/// One Via value (RFC 3261 §20.42).
///
/// `host` is the sent-by host as written (an IPv6 reference keeps its brackets). `params` holds every
/// parameter in received order, values as received (never percent-decoded); `branch`, `received` and `rport`
/// are typed copies. [`Via::render`] writes the typed fields back, so a transport sets `received`/`rport` on
/// `via[0]` (RFC 3261 §18.2.1, RFC 3581 §4) and every response built from the request carries them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub branch: Option<String>,
    pub rport: Option<Option<u16>>,
    pub received: Option<String>,
    pub params: Vec<(String, Option<String>)>,
}

impl Via {
    /// Parses one Via value (already split from a comma list), LWS allowed as RFC 3261 §25.1 allows it
    /// (`SIP / 2.0 / UDP host ; branch = x`). `None` if malformed.
    pub fn parse(s: &str) -> Option<Via> {
        let s = trim_ws(s);
        let mut parts = s.splitn(3, '/');
        let proto = trim_ws(parts.next()?);
        let version = trim_ws(parts.next()?);
        let rest = trim_ws_start(parts.next()?);
        if !proto.eq_ignore_ascii_case("SIP") || version != "2.0" {
            return None;
        }
        let tlen = rest.bytes().take_while(|b| is_token_byte(*b)).count();
        if tlen == 0 {
            return None;
        }
        let transport = rest[..tlen].to_ascii_uppercase();
        let after_t = &rest[tlen..];
        let rest = trim_ws_start(after_t);
        if rest.len() == after_t.len() {
            return None; // LWS is required between transport and sent-by
        }
        // sent-by = host [ COLON port ]
        let hlen = if rest.starts_with('[') {
            rest.find(']')? + 1
        } else {
            rest.bytes().take_while(|b| !is_ws(*b) && *b != b':' && *b != b';').count()
        };
        let host = &rest[..hlen];
        let mut rest = trim_ws_start(&rest[hlen..]);
        let mut port_str = None;
        if let Some(p) = rest.strip_prefix(':') {
            let p = trim_ws_start(p);
            let plen = p.bytes().take_while(u8::is_ascii_digit).count();
            port_str = Some(&p[..plen]);
            rest = &p[plen..];
        }
        let hostport = match port_str {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let hp = ezk_sip_types::host::HostPort::from_str(&hostport).ok()?;
        let params = parse_params(rest)?;
        let branch = match find_param(&params, "branch") {
            Some(Some(b)) => Some(b.to_owned()),
            Some(None) => return None,
            None => None,
        };
        let received = match find_param(&params, "received") {
            Some(Some(r)) => Some(r.to_owned()),
            Some(None) => return None,
            None => None,
        };
        let rport = match find_param(&params, "rport") {
            Some(Some(p)) => Some(Some(p.parse::<u16>().ok()?)),
            Some(None) => Some(None),
            None => None,
        };
        Some(Via { transport, host: host.to_owned(), port: hp.port, branch, rport, received, params })
    }

    /// `SIP/2.0/UDP host:port;param=..` from the fields: parameters in their original order, with the current
    /// `branch`, `received` and `rport` values. A `received` or `rport` that was not in the original is added
    /// (`received` just before `rport` when both are present, as in RFC 3581 §4, else at the end); one whose
    /// field is now `None` is left out.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(32 + self.host.len() + self.params.len() * 16);
        out.push_str("SIP/2.0/");
        out.push_str(&self.transport);
        out.push(' ');
        if self.host.contains(':') && !self.host.starts_with('[') {
            out.push('[');
            out.push_str(&self.host);
            out.push(']');
        } else {
            out.push_str(&self.host);
        }
        if let Some(p) = self.port {
            out.push(':');
            out.push_str(&p.to_string());
        }
        let has = |n: &str| self.params.iter().any(|(p, _)| p.eq_ignore_ascii_case(n));
        let push_received = |out: &mut String| {
            if let Some(r) = &self.received {
                out.push_str(";received=");
                out.push_str(r);
            }
        };
        let push_rport = |out: &mut String| match self.rport {
            Some(Some(p)) => {
                out.push_str(";rport=");
                out.push_str(&p.to_string());
            }
            Some(None) => out.push_str(";rport"),
            None => {}
        };
        let add_received = !has("received");
        let mut received_done = !add_received;
        for (name, value) in &self.params {
            if name.eq_ignore_ascii_case("branch") {
                if let Some(b) = &self.branch {
                    out.push(';');
                    out.push_str(name);
                    out.push('=');
                    out.push_str(b);
                }
            } else if name.eq_ignore_ascii_case("received") {
                push_received(&mut out);
            } else if name.eq_ignore_ascii_case("rport") {
                if !received_done && self.rport.is_some() {
                    push_received(&mut out);
                    received_done = true;
                }
                push_rport(&mut out);
            } else {
                out.push(';');
                out.push_str(name);
                if let Some(v) = value {
                    out.push('=');
                    out.push_str(v);
                }
            }
        }
        if !has("branch")
            && let Some(b) = &self.branch
        {
            out.push_str(";branch=");
            out.push_str(b);
        }
        if !received_done {
            push_received(&mut out);
        }
        if !has("rport") {
            push_rport(&mut out);
        }
        out
    }

    /// First parameter named `name` (case-insensitive): `Some(None)` for a parameter without value.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    /// True if the branch carries the RFC 3261 magic cookie *and* an identifier after it. RFC 4475 badbranch
    /// (`branch=z9hG4bK`) parses, but is false here: the transaction layer must fall back to RFC 2543 matching
    /// (or reject) for it.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch.as_deref().is_some_and(|b| b.len() > 7 && b.starts_with("z9hG4bK"))
    }

    /// The sent-by host as an IP address, if it is one.
    pub fn host_ip(&self) -> Option<IpAddr> {
        let h = self.host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(&self.host);
        h.parse().ok()
    }
}

/// CSeq (RFC 3261 §20.16): a 32-bit sequence number and the method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    /// `1*DIGIT LWS Method`; leading zeros allowed, values above 2^32-1 rejected (RFC 4475 scalar02).
    pub fn parse(s: &str) -> Option<CSeq> {
        let s = trim_ws(s);
        let dlen = s.bytes().take_while(u8::is_ascii_digit).count();
        if dlen == 0 {
            return None;
        }
        let seq = s[..dlen].parse::<u32>().ok()?;
        let rest = &s[dlen..];
        let method = trim_ws_start(rest);
        if method.len() == rest.len() || !is_token(method) {
            return None;
        }
        Some(CSeq { seq, method: Method::parse(method) })
    }
}

impl std::fmt::Display for CSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

/// Strict `1*DIGIT` to a number (no sign, no white space inside).
pub(crate) fn parse_digits<T: FromStr>(s: &str) -> Option<T> {
    let s = trim_ws(s);
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `type "/" subtype *(;param)` to the lower-cased `type/subtype`.
pub(crate) fn parse_media_type(s: &str) -> Option<String> {
    let main = s.split(';').next().unwrap_or("");
    let (t, st) = main.split_once('/')?;
    let (t, st) = (trim_ws(t), trim_ws(st));
    if !is_token(t) || !is_token(st) {
        return None;
    }
    let params = &s[main.len()..];
    parse_params(params)?;
    Some(format!("{}/{}", t.to_ascii_lowercase(), st.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(canonical_name("v"), "Via");
        assert_eq!(canonical_name("I"), "Call-ID");
        assert_eq!(canonical_name("CALL-id"), "Call-ID");
        assert_eq!(canonical_name("cseq"), "CSeq");
        assert_eq!(canonical_name("X-Custom"), "X-Custom");
        assert_eq!(canonical_name("q"), "q");
    }

    #[test]
    fn via_rfc3581_roundtrip() {
        let src = "SIP/2.0/UDP 10.1.1.1:4540;received=192.0.2.1;rport=9988;branch=z9hG4bKkjshdyff";
        let v = Via::parse(src).unwrap();
        assert_eq!(v.received.as_deref(), Some("192.0.2.1"));
        assert_eq!(v.rport, Some(Some(9988)));
        assert_eq!(v.render(), src);
    }

    #[test]
    fn via_received_rport_set_by_transport() {
        let mut v = Via::parse("SIP/2.0/UDP 10.1.1.1:4540;rport;branch=z9hG4bKkjshdyff").unwrap();
        assert_eq!(v.rport, Some(None));
        v.received = Some("192.0.2.1".into());
        v.rport = Some(Some(9988));
        assert_eq!(v.render(), "SIP/2.0/UDP 10.1.1.1:4540;received=192.0.2.1;rport=9988;branch=z9hG4bKkjshdyff");
        let mut v = Via::parse("SIP/2.0/TCP [2001:db8::1];branch=z9hG4bKx").unwrap();
        assert_eq!(v.host_ip(), Some("2001:db8::1".parse().unwrap()));
        v.received = Some("2001:db8::9".into());
        assert_eq!(v.render(), "SIP/2.0/TCP [2001:db8::1];branch=z9hG4bKx;received=2001:db8::9");
    }

    #[test]
    fn via_bad() {
        for bad in [
            "SIP/2.0/UDP",
            "SIP/2.0/UDP ",
            "SIP/2.0/UDPhost",
            "SIP/3.0/UDP host",
            "SIP/2.0/UDP host;;",
            "SIP/2.0/UDP host;branch",
            "SIP/2.0/UDP host;rport=x",
            "SIP/2.0/UDP host:99999",
            "SIP/2.0/UDP host:",
            "SIP/2.0/UDP [::1",
            "SIP/2.0/UDP host junk",
        ] {
            assert!(Via::parse(bad).is_none(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn cseq() {
        assert_eq!(CSeq::parse("0009 INVITE"), Some(CSeq { seq: 9, method: Method::Invite }));
        assert!(CSeq::parse("36893488147419103232 REGISTER").is_none());
        assert!(CSeq::parse("1INVITE").is_none());
        assert!(CSeq::parse("-1 INVITE").is_none());
        assert!(CSeq::parse("1 INVITE x").is_none());
    }

    #[test]
    fn media_types() {
        assert_eq!(parse_media_type("Application/SDP ; charset=utf-8").as_deref(), Some("application/sdp"));
        assert_eq!(parse_media_type("multipart/mixed;boundary=7a9cbec02ceef655").as_deref(), Some("multipart/mixed"));
        assert!(parse_media_type("sdp").is_none());
    }
}
